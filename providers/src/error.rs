//! The Error Provider (namespace `Error Provider`): raise a chosen error from a procedure —
//! typically a catch block re-raising what it caught — translate an error code to another,
//! and write an event to the log. It changes nothing, so nothing of it is ever undone.
//!
//! MPS's Error Provider reads its translation table from a file named in the registry;
//! here the table travels in the step's own `executeData` (the same `Items/Item` format),
//! so a namespace file carries its translations with it. Reference: `docs/providers/error.md`.

use crate::common::{input, opt_nonempty, req_input};
use async_trait::async_trait;
use provisio_engine::data::{Element, Node};
use provisio_engine::model::ProcKind;
use provisio_engine::provider::{
    Call, Done, Outcome, Preview, ProcedureSpec, Provider, ProviderError, UndoKind,
};

/// E_FAIL, what MPS raises for an error the translation table does not know.
const E_FAIL: u32 = ProviderError::E_FAIL;

/// What a masked value looks like in a logged event (the engine masks secrets the same way).
const MASK: &str = "********";

/// The Error Provider. Stateless: every call reads all it needs from its executeData.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorProvider;

impl ErrorProvider {
    /// The provider.
    pub fn new() -> ErrorProvider {
        ErrorProvider
    }
}

/// Parses an HRESULT as MPS accepts it: hexadecimal (`0x80070057`) or decimal, negative
/// decimals being the signed 32-bit form (`-2147024809` is `0x80070057`). `field` names
/// the input in the error.
pub fn parse_hresult(field: &str, text: &str) -> Result<u32, ProviderError> {
    let t = text.trim();
    let bad = || {
        ProviderError::invalid(format!(
            "input `{field}` must be an HRESULT in hexadecimal (0x80070057) or decimal \
             (-2147024809), got {t:?}"
        ))
    };
    let parsed = if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).map_err(|_| bad())?
    } else if let Ok(n) = t.parse::<i64>() {
        if let Ok(signed) = i32::try_from(n) {
            signed as u32
        } else {
            u32::try_from(n).map_err(|_| bad())?
        }
    } else {
        return Err(bad());
    };
    Ok(parsed)
}

/// An HRESULT that reports a failure: its top (severity) bit is set. Raising a success
/// code (0, or `0x00000001`) would end a transaction "failed" with a code that says it
/// succeeded.
fn failure_code(field: &str, text: &str) -> Result<u32, ProviderError> {
    let code = parse_hresult(field, text)?;
    if code & 0x8000_0000 == 0 {
        return Err(ProviderError::invalid(format!(
            "input `{field}` is {code:#010x}, a success code; an error code has its top bit \
             set (0x8…….)"
        )));
    }
    Ok(code)
}

/// The error to raise for `SetError`: code `hr`, description `desc`.
fn set_error(ed: &Element) -> Result<ProviderError, ProviderError> {
    let code = failure_code("hr", &req_input(ed, &["hr"])?)?;
    let description = req_input(ed, &["desc"])?;
    Ok(ProviderError::Permanent {
        code,
        message: description,
    })
}

/// The error a `TranslateError` call translates: `hr` + `desc`, else the `errorContext` a
/// catch block copied in (its `code` and `description` attributes).
fn error_to_translate(ed: &Element) -> Result<(u32, String), ProviderError> {
    if let Some(hr) = opt_nonempty(ed, &["hr"]) {
        let code = parse_hresult("hr", &hr)?;
        return Ok((code, opt_nonempty(ed, &["desc"]).unwrap_or_default()));
    }
    if let Some(ec) = ed.child("errorContext") {
        let code = ec.attr("code").ok_or_else(|| {
            ProviderError::invalid("input `errorContext` has no `code` attribute")
        })?;
        let code = parse_hresult("errorContext/@code", code)?;
        return Ok((code, ec.attr("description").unwrap_or_default().to_string()));
    }
    Err(ProviderError::invalid(
        "input `hr` is required (or an `errorContext`, e.g. <before source=\"context\" \
         sourcePath=\"errorContext\" destination=\"executeData\"/>)",
    ))
}

/// An attribute, else the text of a child element of that name (YAML and JSON have no
/// attributes).
fn field(e: &Element, name: &str) -> Option<String> {
    e.attr(name)
        .map(str::to_string)
        .or_else(|| e.child(name).map(Element::string_value))
}

/// The error a `TranslateError` call raises: the first `Items/Item` whose `name`
/// (`context|code`, or `code` alone for any context) matches; else E_FAIL
/// (`mustHandleError`, the default) or the original error (`mustHandleError` 0).
fn translate_error(ed: &Element) -> Result<ProviderError, ProviderError> {
    let (code, description) = error_to_translate(ed)?;
    let context = opt_nonempty(ed, &["errorMessageContext"]).unwrap_or_default();
    let must_handle = match opt_nonempty(ed, &["mustHandleError"])
        .as_deref()
        .map(str::trim)
    {
        None | Some("1") | Some("true") => true,
        Some("0") | Some("false") => false,
        Some(other) => {
            return Err(ProviderError::invalid(format!(
                "input `mustHandleError` must be 1 or 0, got {other:?}"
            )))
        }
    };
    let items = ed.child("Items");
    for (n, item) in items.iter().flat_map(|i| i.elements()).enumerate() {
        if item.name != "Item" {
            return Err(ProviderError::invalid(format!(
                "`Items` holds <{}>; each entry is an <Item name=\"context|code\"> with \
                 <message> and <errorCode>",
                item.name
            )));
        }
        let at = n + 1;
        let name = field(item, "name").ok_or_else(|| {
            ProviderError::invalid(format!("Item {at} has no `name` (\"context|code\")"))
        })?;
        let (item_context, item_code) = match name.rsplit_once('|') {
            Some((c, k)) => (c.trim(), k),
            None => ("", name.as_str()),
        };
        let item_code = parse_hresult(&format!("Item {at} name"), item_code)?;
        if item_code != code || (!item_context.is_empty() && item_context != context) {
            continue;
        }
        let to = field(item, "errorCode").ok_or_else(|| {
            ProviderError::invalid(format!("Item {at} ({name}) has no `errorCode`"))
        })?;
        let message = field(item, "message").ok_or_else(|| {
            ProviderError::invalid(format!("Item {at} ({name}) has no `message`"))
        })?;
        return Ok(ProviderError::Permanent {
            code: failure_code(&format!("Item {at} errorCode"), &to)?,
            message,
        });
    }
    let key = if context.is_empty() {
        format!("{code:#010x}")
    } else {
        format!("{context}|{code:#010x}")
    };
    Ok(if must_handle {
        ProviderError::Permanent {
            code: E_FAIL,
            message: format!("no translation for {key}: {description}"),
        }
    } else {
        ProviderError::Permanent {
            code,
            message: description,
        }
    })
}

/// The log level of a `ReportEvent` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

/// One `ReportEvent`: what is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    level: Level,
    code: u32,
    source: String,
    message: String,
}

/// Whether an element is marked `do-not-log` (MPS: never written to logs).
fn marked(e: &Element) -> bool {
    matches!(e.attr("do-not-log"), Some("1") | Some("true"))
}

/// The text of each `parameters/parameter`, masked where marked `do-not-log` (on the
/// parameter, on something inside it, or on `parameters`); values of marked elements are
/// scrubbed from the other parameters too.
fn event_parameters(ed: &Element) -> Vec<String> {
    let Some(params) = ed.child("parameters") else {
        return Vec::new();
    };
    let mut secrets = Vec::new();
    fn collect(e: &Element, inherited: bool, out: &mut Vec<String>) {
        let secret = inherited || marked(e);
        if secret {
            let v = e.string_value();
            if !v.is_empty() {
                out.push(v);
            }
        }
        for c in &e.children {
            if let Node::Element(c) = c {
                collect(c, secret, out);
            }
        }
    }
    collect(params, false, &mut secrets);
    // Longest first, so a secret containing another is masked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    params
        .elements()
        .filter(|p| p.name == "parameter")
        .map(|p| {
            let mut text = p.string_value();
            for s in &secrets {
                text = text.replace(s.as_str(), MASK);
            }
            text
        })
        .collect()
}

fn report_event(ed: &Element) -> Result<Event, ProviderError> {
    let code = match opt_nonempty(ed, &["hr"]) {
        Some(hr) => parse_hresult("hr", &hr)?,
        None => E_FAIL,
    };
    let level = match opt_nonempty(ed, &["level"])
        .map(|l| l.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("error") => Level::Error,
        Some("warn") | Some("warning") => Level::Warn,
        Some("info") | Some("information") => Level::Info,
        Some("debug") => Level::Debug,
        Some(other) => {
            return Err(ProviderError::invalid(format!(
                "input `level` must be error, warn, info or debug, got {other:?}"
            )))
        }
    };
    let source = opt_nonempty(ed, &["source"]).unwrap_or_else(|| "Provisioning".to_string());
    let parameters = event_parameters(ed);
    if parameters.is_empty() {
        return Err(ProviderError::invalid(
            "input `parameters` holds no <parameter>: nothing to report",
        ));
    }
    Ok(Event {
        level,
        code,
        source,
        message: parameters.join("; "),
    })
}

fn log_event(e: &Event, call: &Call) {
    let code = format!("{:#010x}", e.code);
    let (txn, step) = (call.context.txn_id.as_str(), call.context.step_id.as_str());
    match e.level {
        Level::Error => {
            tracing::error!(target: "provisio::event", hr = %code, source = %e.source, txn = %txn, step = %step, "{}", e.message)
        }
        Level::Warn => {
            tracing::warn!(target: "provisio::event", hr = %code, source = %e.source, txn = %txn, step = %step, "{}", e.message)
        }
        Level::Info => {
            tracing::info!(target: "provisio::event", hr = %code, source = %e.source, txn = %txn, step = %step, "{}", e.message)
        }
        Level::Debug => {
            tracing::debug!(target: "provisio::event", hr = %code, source = %e.source, txn = %txn, step = %step, "{}", e.message)
        }
    }
}

#[async_trait]
impl Provider for ErrorProvider {
    fn name(&self) -> &str {
        "Error"
    }

    fn procedures(&self) -> Vec<ProcedureSpec> {
        let read = |name: &str, description: &str, inputs| ProcedureSpec {
            name: name.to_string(),
            kind: ProcKind::Read,
            undo: UndoKind::Nothing,
            description: description.to_string(),
            inputs,
        };
        vec![
            read(
                "SetError",
                "Raises the error `hr` with description `desc`: the step fails with exactly \
                 that code and description (a catch block re-raising, or a guard failing a \
                 procedure on purpose).",
                vec![
                    input("hr", "string", true, "HRESULT to raise: 0x80070057 or decimal"),
                    input("desc", "string", true, "the error's description"),
                ],
            ),
            read(
                "TranslateError",
                "Raises the translation of an error: the first Items/Item whose name \
                 (context|code) matches gives the new code (errorCode) and description \
                 (message); unmatched errors become E_FAIL, or stay as they are with \
                 mustHandleError 0.",
                vec![
                    input("hr", "string", false, "the code to translate (else errorContext/@code)"),
                    input("desc", "string", false, "its description (else errorContext/@description)"),
                    input("errorMessageContext", "string", false, "the context half of the Item names to match"),
                    input("Items", "map", false, "the translation table: Item name=\"context|code\" with message and errorCode"),
                    input("mustHandleError", "bool", false, "1 (default): an unmatched error becomes E_FAIL; 0: it is raised unchanged"),
                ],
            ),
            read(
                "ReportEvent",
                "Writes an event to the log at `level` (error by default), with its `hr` and \
                 `source`; elements marked do-not-log are masked. Changes nothing.",
                vec![
                    input("parameters", "map", true, "parameter elements; their texts form the message"),
                    input("hr", "string", false, "the event's HRESULT (default 0x80004005)"),
                    input("source", "string", false, "the event's source (default Provisioning)"),
                    input("level", "string", false, "error (default), warn, info or debug"),
                ],
            ),
        ]
    }

    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        let ed = &call.execute_data;
        match call.context.procedure.as_str() {
            "SetError" => Err(set_error(ed)?),
            "TranslateError" => Err(translate_error(ed)?),
            "ReportEvent" => {
                log_event(&report_event(ed)?, &call);
                Ok(Outcome {
                    execute_data: call.execute_data,
                    undo: None,
                })
            }
            other => Err(ProviderError::Unsupported(format!(
                "the Error provider has no procedure `{other}` (it serves SetError, \
                 TranslateError and ReportEvent)"
            ))),
        }
    }

    async fn undo(&self, _done: Done) -> Result<(), ProviderError> {
        // Nothing it does changes anything.
        Ok(())
    }

    async fn recover(&self, _call: &Call) -> Result<Option<Element>, ProviderError> {
        // A call that changes nothing was, for every purpose, not applied.
        Ok(None)
    }

    async fn preview(&self, call: &Call) -> Result<Preview, ProviderError> {
        let ed = &call.execute_data;
        Ok(match call.context.procedure.as_str() {
            "SetError" | "TranslateError" => {
                let e = if call.context.procedure == "SetError" {
                    set_error(ed)?
                } else {
                    translate_error(ed)?
                };
                Preview::Fail(format!("raises {:#010x}: {}", e.code(), e.message()))
            }
            "ReportEvent" => {
                let e = report_event(ed)?;
                Preview::NoChange(format!("would log {:#010x} from {}", e.code, e.source))
            }
            _ => Preview::Unknown,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use provisio_engine::data::xml;
    use provisio_engine::provider::CallContext;
    use std::sync::{Arc, Mutex};

    fn call(procedure: &str, execute_data: &str) -> Call {
        Call {
            intent: provisio_engine::provider::IntentBarrier::passed(),
            state: provisio_engine::ProviderState::detached(),
            context: CallContext {
                txn_id: "0190c0de-0000-7000-8000-0000000000e1"
                    .parse()
                    .expect("a transaction id"),
                step_id: "t/catch/raise".into(),
                attempt: 1,
                namespace: "Error Provider".into(),
                procedure: procedure.into(),
            },
            provider_context: Element::new("providerContext"),
            execute_data: xml::parse(execute_data, &xml::Limits::default()).expect("xml"),
        }
    }

    async fn raised(procedure: &str, execute_data: &str) -> ProviderError {
        match ErrorProvider.execute(call(procedure, execute_data)).await {
            Ok(o) => panic!(
                "{procedure} returned {:?} instead of raising",
                o.execute_data
            ),
            Err(e) => e,
        }
    }

    #[test]
    fn hresults_in_hex_and_decimal() {
        assert_eq!(parse_hresult("hr", "0x80070057").unwrap(), 0x8007_0057);
        assert_eq!(parse_hresult("hr", " 0X8007005a ").unwrap(), 0x8007_005A);
        assert_eq!(parse_hresult("hr", "-2147024809").unwrap(), 0x8007_0057);
        assert_eq!(parse_hresult("hr", "2147942487").unwrap(), 0x8007_0057);
        for bad in ["", "0x", "0x1FFFFFFFF", "E_FAIL", "-9999999999"] {
            let e = parse_hresult("hr", bad).unwrap_err();
            assert!(e.message().contains("input `hr`"), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn set_error_raises_exactly_the_code_and_description() {
        let e = raised(
            "SetError",
            "<executeData><hr>0x80070057</hr><desc>tenant name is taken</desc></executeData>",
        )
        .await;
        assert_eq!(
            e,
            ProviderError::Permanent {
                code: 0x8007_0057,
                message: "tenant name is taken".into()
            }
        );
    }

    #[tokio::test]
    async fn set_error_refuses_missing_inputs_and_success_codes() {
        let e = raised("SetError", "<executeData><desc>x</desc></executeData>").await;
        assert_eq!(e, ProviderError::invalid("input `hr` is required"));
        let e = raised("SetError", "<executeData><hr>0x80004005</hr></executeData>").await;
        assert_eq!(e, ProviderError::invalid("input `desc` is required"));
        let e = raised(
            "SetError",
            "<executeData><hr>0</hr><desc>fine</desc></executeData>",
        )
        .await;
        assert_eq!(e.code(), ProviderError::E_INVALIDARG);
        assert!(e.message().contains("a success code"), "{e}");
    }

    const TABLE: &str = "<Items>\
        <Item name=\"adduser|0x800700b7\"><message>That user name is taken.</message><errorCode>0x82101391</errorCode></Item>\
        <Item name=\"0x80070005\"><message>Not allowed.</message><errorCode>0x82100005</errorCode></Item>\
        </Items>";

    #[tokio::test]
    async fn translate_error_maps_by_context_and_code() {
        let from_context = format!(
            "<executeData><errorContext code=\"0x800700b7\" description=\"exists\"/>\
             <errorMessageContext>adduser</errorMessageContext>{TABLE}</executeData>"
        );
        assert_eq!(
            raised("TranslateError", &from_context).await,
            ProviderError::Permanent {
                code: 0x8210_1391,
                message: "That user name is taken.".into()
            }
        );
        // An item without a context matches in any context; hr/desc win over errorContext.
        let any_context = format!(
            "<executeData><hr>-2147024891</hr><desc>denied</desc>\
             <errorMessageContext>other</errorMessageContext>{TABLE}</executeData>"
        );
        assert_eq!(
            raised("TranslateError", &any_context).await,
            ProviderError::Permanent {
                code: 0x8210_0005,
                message: "Not allowed.".into()
            }
        );
    }

    #[tokio::test]
    async fn translate_error_without_a_match_is_e_fail_or_the_original() {
        let other_context = format!(
            "<executeData><hr>0x800700b7</hr><desc>exists</desc>\
             <errorMessageContext>createorg</errorMessageContext>{TABLE}</executeData>"
        );
        assert_eq!(
            raised("TranslateError", &other_context).await,
            ProviderError::Permanent {
                code: E_FAIL,
                message: "no translation for createorg|0x800700b7: exists".into()
            }
        );
        let keep = format!(
            "<executeData><hr>0x800700b7</hr><desc>exists</desc>\
             <mustHandleError>0</mustHandleError>{TABLE}</executeData>"
        );
        assert_eq!(
            raised("TranslateError", &keep).await,
            ProviderError::Permanent {
                code: 0x8007_00B7,
                message: "exists".into()
            }
        );
        let bad = "<executeData><hr>0x1</hr><Items><Item name=\"0x1\"><message>m</message></Item></Items></executeData>";
        let e = raised("TranslateError", bad).await;
        assert_eq!(e, ProviderError::invalid("Item 1 (0x1) has no `errorCode`"));
    }

    /// A log sink for one test: everything written through `tracing` while it is the
    /// thread's default subscriber.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn report_event_logs_at_its_level_with_secrets_masked() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let ed = "<executeData><level>warn</level><hr>0x82101391</hr><source>Hosted AD</source>\
            <parameters><parameter>reset for ann</parameter>\
            <parameter do-not-log=\"1\">S3cret!pw</parameter>\
            <parameter>old: S3cret!pw</parameter></parameters></executeData>";
        let out = ErrorProvider
            .execute(call("ReportEvent", ed))
            .await
            .expect("ReportEvent succeeds");
        assert_eq!(out.undo, None);
        let logged = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(logged.contains("WARN"), "{logged}");
        assert!(
            logged.contains("reset for ann; ********; old: ********"),
            "{logged}"
        );
        assert!(logged.contains("hr=0x82101391"), "{logged}");
        assert!(logged.contains("source=Hosted AD"), "{logged}");
        assert!(!logged.contains("S3cret"), "{logged}");
        let e = ErrorProvider
            .execute(call(
                "ReportEvent",
                "<executeData><level>loud</level><parameters><parameter>x</parameter></parameters></executeData>",
            ))
            .await
            .unwrap_err();
        assert!(e.message().contains("input `level`"), "{e}");
    }

    #[tokio::test]
    async fn previews_say_what_a_run_would_do() {
        let p = ErrorProvider
            .preview(&call(
                "SetError",
                "<executeData><hr>0x80070057</hr><desc>bad</desc></executeData>",
            ))
            .await
            .unwrap();
        assert_eq!(p, Preview::Fail("raises 0x80070057: bad".into()));
        let p = ErrorProvider
            .preview(&call(
                "ReportEvent",
                "<executeData><parameters><parameter>x</parameter></parameters></executeData>",
            ))
            .await
            .unwrap();
        assert_eq!(
            p,
            Preview::NoChange("would log 0x80004005 from Provisioning".into())
        );
    }
}
