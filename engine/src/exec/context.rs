//! The request's `context` as MPS defines it: the engine owns
//! `transactionContext/@transactionId`, the `authentication` of a `securityContext` is
//! secret by nature, and `clientContext` goes back to the client with the response.

use super::redact::Redactor;
use crate::data::{Element, Node};
use crate::TxnId;

/// Writes the transaction's id into `context/transactionContext/@transactionId`. Returns
/// the id the client had put there when it differs (the engine's id wins; the caller warns).
pub(crate) fn stamp_transaction_id(context: &mut Element, id: &TxnId) -> Option<String> {
    let slot = context
        .elements_mut()
        .find(|e| e.name == "transactionContext");
    let tc = match slot {
        Some(tc) => tc,
        None => context.push(Element::new("transactionContext")),
    };
    let previous = tc
        .attr("transactionId")
        .filter(|v| *v != id.as_str())
        .map(str::to_string);
    tc.set_attr("transactionId", id.as_str());
    previous
}

/// Teaches the redactor every credential in `context/securityContext/authentication`:
/// passwords, keys, tickets — every attribute and text except the names of the account
/// (`username`, `domain`), wherever a transform copies them afterwards.
pub(crate) fn learn_credentials(context: &Element, redactor: &Redactor) {
    let Some(auth) = context
        .child("securityContext")
        .and_then(|s| s.child("authentication"))
    else {
        return;
    };
    fn walk(e: &Element, redactor: &Redactor) {
        for (name, value) in &e.attrs {
            if !is_account_name(name) {
                redactor.learn_value(value);
            }
        }
        for child in &e.children {
            match child {
                Node::Text(t) if !is_account_name(&e.name) => redactor.learn_value(&t.to_text()),
                Node::Text(_) => {}
                Node::Element(c) => walk(c, redactor),
            }
        }
    }
    walk(auth, redactor);
}

fn is_account_name(name: &str) -> bool {
    matches!(name, "username" | "userName" | "domain")
}

/// The `clientContext` to hand back with the response, secrets masked.
pub(crate) fn client_context(context: &Element, redactor: &Redactor) -> Option<Element> {
    let mut cc = context.child("clientContext")?.clone();
    redactor.redact_element(&mut cc);
    Some(cc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::xml;
    use std::collections::BTreeSet;

    fn parse(s: &str) -> Element {
        xml::parse(s, &xml::Limits::default()).expect("test XML parses")
    }

    #[test]
    fn the_engine_owns_the_transaction_id() {
        let id = TxnId::new_v7();
        let mut cx = parse(r#"<context><clientContext clientTransactionId="c1"/></context>"#);
        assert_eq!(stamp_transaction_id(&mut cx, &id), None);
        let tc = cx.child("transactionContext").expect("added");
        assert_eq!(tc.attr("transactionId"), Some(id.as_str()));

        let mut cx =
            parse(r#"<context><transactionContext transactionId="mine" extra="kept"/></context>"#);
        assert_eq!(stamp_transaction_id(&mut cx, &id).as_deref(), Some("mine"));
        let tc = cx.child("transactionContext").expect("kept");
        assert_eq!(tc.attr("transactionId"), Some(id.as_str()));
        assert_eq!(tc.attr("extra"), Some("kept"));
        assert_eq!(cx.elements().count(), 1);
    }

    #[test]
    fn credentials_are_secret_account_names_are_not() {
        let cx = parse(
            r#"<context><securityContext><authentication>
                 <basic username="admin" domain="corp" password="Pw-s3cret"/>
                 <token>tok-abcdef</token>
               </authentication></securityContext></context>"#,
        );
        let r = Redactor::new(BTreeSet::new(), &Element::new("data"));
        learn_credentials(&cx, &r);
        let shown = r.redact_text("user admin@corp with Pw-s3cret and tok-abcdef");
        assert!(!shown.contains("Pw-s3cret"), "{shown}");
        assert!(!shown.contains("tok-abcdef"), "{shown}");
        assert!(shown.contains("admin@corp"), "{shown}");
    }
}
