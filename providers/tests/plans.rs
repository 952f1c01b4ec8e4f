//! Managed Plans through the real engine with a durable store (sled journal): services and
//! their dependencies, plans, customers with plan limits (a user beyond `maxUsers`, a quota
//! above `mailboxQuotaKB` refused with the plan and the limit named), available plans,
//! assets held by one customer and shared down from a reseller, rollback leaving nothing,
//! concurrent charges of a counted limit that never pass it, and bad input.

use provisio_engine::model::Format;
use provisio_engine::{
    parse_request, Catalog, DurableJournal, Element, Engine, EngineOptions, ProviderRegistry,
    RetryOptions, SledStore, Store, TxnResult, TxnState,
};
use provisio_providers::error::ErrorProvider;
use provisio_providers::plans::{PlansProvider, PROVIDER};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

const NS: &str = "Managed Plans";
const E_PLAN_LIMIT: u32 = provisio_engine::codes::E_PLAN_LIMIT;

fn engine(dir: &std::path::Path) -> Engine {
    let mut registry = ProviderRegistry::new();
    registry.register(Arc::new(PlansProvider::new()));
    registry.register(Arc::new(ErrorProvider::new()));
    let catalog = Catalog::new(Vec::new(), &registry).unwrap();
    let options = EngineOptions {
        retry: RetryOptions::default()
            .with_intervals(Duration::from_millis(1), Duration::from_millis(1)),
        step_timeout: Duration::from_secs(60),
        ..EngineOptions::default()
    };
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir).unwrap());
    let journal = Arc::new(DurableJournal::new(store, None, "test"));
    Engine::new(catalog, registry, options).with_journal(journal)
}

/// One call with `with` (a YAML flow mapping); its executeData copied to `data/out`;
/// `then_fail` adds a failing step after it.
fn call(procedure: &str, with: &str, then_fail: bool) -> String {
    let mut y = format!(
        "procedure:\n  steps:\n    call:\n      call: {NS}/{procedure}\n      with: {with}\n      after:\n        - {{ source: executeData, destination: data, destinationPath: out }}\n"
    );
    if then_fail {
        y.push_str(
            "    fail:\n      call: Error Provider/SetError\n      needs: [call]\n      with: { hr: \"0x80070057\", desc: asked to fail }\n",
        );
    }
    y
}

async fn run(e: &Engine, procedure: &str, with: &str) -> TxnResult {
    let request = parse_request(&call(procedure, with, false), "req.yaml", Format::Yaml).unwrap();
    e.run(&request).await.unwrap()
}

/// Runs and expects a commit; the call's executeData.
async fn ok(e: &Engine, procedure: &str, with: &str) -> Element {
    let r = run(e, procedure, with).await;
    assert_eq!(
        r.state,
        TxnState::Committed,
        "{procedure} {with}: {:?}",
        r.failure
    );
    let out = r.data.unwrap().child("out").unwrap().clone();
    out.child("executeData").unwrap().clone()
}

/// Runs and expects a rollback; the failure's code and message.
async fn refused(e: &Engine, procedure: &str, with: &str) -> (u32, String) {
    let request = parse_request(&call(procedure, with, false), "req.yaml", Format::Yaml).unwrap();
    match e.run(&request).await {
        Err(err) => (0, err.to_string()),
        Ok(r) => {
            assert_eq!(r.state, TxnState::RolledBack, "{procedure} {with}");
            let f = r.failure.unwrap();
            (f.code, f.message)
        }
    }
}

fn record(e: &Engine, key: &str) -> Option<Value> {
    e.state_value(PROVIDER, key.as_bytes())
        .unwrap()
        .map(|v| serde_json::from_slice(&v).unwrap())
}

fn text(e: &Element, path: &[&str]) -> String {
    let mut at = e;
    for p in path {
        at = at.child(p).unwrap_or_else(|| panic!("no {p} in {at:?}"));
    }
    at.string_value()
}

/// Services, plans and a reseller with a tenant organization on plan Gold (2 users,
/// 2048 KB mailboxes).
async fn setup(e: &Engine) {
    ok(e, "AddService", "{ serviceName: HostedActiveDirectory }").await;
    ok(e, "AddService", "{ serviceName: HostedEmail }").await;
    ok(
        e,
        "AddServiceDependency",
        "{ serviceName: HostedEmail, dependsOn: HostedActiveDirectory }",
    )
    .await;
    ok(e, "CreatePlan", "{ planName: Gold, services: { service: [HostedActiveDirectory, HostedEmail] }, limits: { maxUsers: \"2\", mailboxQuotaKB: \"2048\", maxMailboxes: \"10\" } }").await;
    ok(
        e,
        "CreatePlan",
        "{ planName: Basic, services: { service: HostedActiveDirectory }, limits: { maxUsers: \"1\" } }",
    )
    .await;
    ok(
        e,
        "CreatePlan",
        "{ planName: Platinum, services: { service: HostedActiveDirectory } }",
    )
    .await;
    ok(e, "CreateCustomer", "{ customerName: Reseller }").await;
    ok(
        e,
        "AddAvailablePlansToCustomer",
        "{ customerName: Reseller, availablePlans: { planName: [Gold, Basic] } }",
    )
    .await;
    ok(
        e,
        "CreateCustomer",
        "{ customerName: Fabrikam, parent: Reseller, planName: Gold }",
    )
    .await;
}

#[tokio::test]
async fn plan_limits_refuse_with_the_plan_and_the_limit_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    setup(&e).await;
    for user in ["ann", "bob"] {
        ok(
            &e,
            "CreateCustomer",
            &format!("{{ customerName: {user}, type: user, parent: Fabrikam }}"),
        )
        .await;
    }
    let (code, message) = refused(
        &e,
        "CreateCustomer",
        "{ customerName: carl, type: user, parent: Fabrikam }",
    )
    .await;
    assert_eq!(code, E_PLAN_LIMIT);
    assert_eq!(
        message,
        "plan Gold allows 2 users; organization Fabrikam has 2"
    );
    assert_eq!(record(&e, "customer/carl"), None);
    // A user inherits the organization's plan; a quota above it is refused.
    let (code, message) = refused(
        &e,
        "CheckPlanLimit",
        "{ customerName: ann, limit: mailboxQuotaKB, amount: \"4096\" }",
    )
    .await;
    assert_eq!(code, E_PLAN_LIMIT);
    assert_eq!(
        message,
        "plan Gold allows mailboxQuotaKB up to 2048; user ann asks for 4096"
    );
    let out = ok(
        &e,
        "CheckPlanLimit",
        "{ customerName: ann, limit: mailboxQuotaKB, amount: \"1024\" }",
    )
    .await;
    assert_eq!(text(&out, &["planName"]), "Gold");
    let out = ok(&e, "GetPlansByCustomer", "{ customerName: ann }").await;
    assert_eq!(text(&out, &["planName"]), "Gold");
    assert_eq!(text(&out, &["inherited"]), "true");
    assert_eq!(text(&out, &["plan", "limits", "maxUsers"]), "2");
    // Deleting a user gives its place back.
    ok(&e, "DeleteCustomer", "{ customerName: bob }").await;
    ok(
        &e,
        "CreateCustomer",
        "{ customerName: carl, type: user, parent: Fabrikam }",
    )
    .await;
    // A downgrade below the usage is refused; a plan the reseller does not offer too.
    let (code, message) = refused(
        &e,
        "ChangeCustomerPlan",
        "{ customerName: Fabrikam, planName: Basic }",
    )
    .await;
    assert_eq!(code, E_PLAN_LIMIT);
    assert_eq!(
        message,
        "plan Basic allows 1 users; organization Fabrikam has 2"
    );
    let (_, message) = refused(
        &e,
        "ChangeCustomerPlan",
        "{ customerName: Fabrikam, planName: Platinum }",
    )
    .await;
    assert!(
        message.contains("plan Platinum is not available to organization Fabrikam"),
        "{message}"
    );
    // The events say what happened.
    let out = ok(&e, "GetCustomer", "{ customerName: Fabrikam }").await;
    let events: Vec<String> = out
        .child("customer")
        .unwrap()
        .child("events")
        .unwrap()
        .elements()
        .map(|x| text(x, &["type"]))
        .collect();
    assert_eq!(events, ["Created", "PlanAdded"]);
    assert_eq!(text(&out, &["customer", "usage", "maxUsers"]), "2");
}

/// Counts are kept whether or not a plan limits them: an organization that made users and
/// mailboxes with no plan (or a plan without that limit) cannot then take a plan whose
/// limit it already passes, and giving places back works either way.
#[tokio::test]
async fn usage_is_counted_before_any_plan_limits_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    setup(&e).await;
    ok(
        &e,
        "CreateCustomer",
        "{ customerName: Contoso, parent: Reseller }",
    )
    .await;
    for user in ["ann", "bob"] {
        ok(
            &e,
            "CreateCustomer",
            &format!("{{ customerName: {user}, type: user, parent: Contoso }}"),
        )
        .await;
    }
    let out = ok(
        &e,
        "CheckPlanLimit",
        "{ customerName: Contoso, limit: maxMailboxes, amount: \"1\" }",
    )
    .await;
    assert_eq!(text(&out, &["usage"]), "1");
    assert!(out.child("limitValue").is_none(), "{out:?}");
    let out = ok(&e, "GetCustomer", "{ customerName: Contoso }").await;
    assert_eq!(text(&out, &["customer", "usage", "maxUsers"]), "2");
    assert_eq!(text(&out, &["customer", "usage", "maxMailboxes"]), "1");
    // Basic allows one user: Contoso has two.
    let (code, message) = refused(
        &e,
        "ChangeCustomerPlan",
        "{ customerName: Contoso, planName: Basic }",
    )
    .await;
    assert_eq!(code, E_PLAN_LIMIT);
    assert_eq!(
        message,
        "plan Basic allows 1 users; organization Contoso has 2"
    );
    // The mailbox place is given back as it was taken.
    ok(
        &e,
        "ReleasePlanLimit",
        "{ customerName: Contoso, limit: maxMailboxes, amount: \"1\" }",
    )
    .await;
    ok(&e, "DeleteCustomer", "{ customerName: bob }").await;
    ok(
        &e,
        "ChangeCustomerPlan",
        "{ customerName: Contoso, planName: Basic }",
    )
    .await;
    let out = ok(&e, "GetCustomer", "{ customerName: Contoso }").await;
    assert_eq!(text(&out, &["customer", "usage", "maxUsers"]), "1");
    // A count given back to 0 leaves no entry: the record is as before the first charge.
    assert!(
        out.child("customer")
            .and_then(|c| c.child("usage"))
            .and_then(|u| u.child("maxMailboxes"))
            .is_none(),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_rollback_leaves_no_customer_no_charge_and_no_asset() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    setup(&e).await;
    let before = record(&e, "customer/Fabrikam").unwrap();
    for (procedure, with) in [
        (
            "CreateCustomer",
            "{ customerName: dan, type: user, parent: Fabrikam }",
        ),
        (
            "CheckPlanLimit",
            "{ customerName: Fabrikam, limit: maxMailboxes, amount: \"3\" }",
        ),
        (
            "AddAsset",
            "{ customerName: Fabrikam, assetType: PrimaryDomain, value: fabrikam.com }",
        ),
        (
            "ChangeCustomerPlan",
            "{ customerName: Fabrikam, planName: Basic }",
        ),
    ] {
        let request =
            parse_request(&call(procedure, with, true), "req.yaml", Format::Yaml).unwrap();
        let r = e.run(&request).await.unwrap();
        assert_eq!(r.state, TxnState::RolledBack, "{procedure}");
        assert_eq!(r.failure.unwrap().message, "asked to fail", "{procedure}");
        assert_eq!(
            record(&e, "customer/Fabrikam").unwrap(),
            before,
            "{procedure}"
        );
    }
    assert_eq!(record(&e, "customer/dan"), None);
    assert_eq!(record(&e, "asset/domain/fabrikam.com"), None);
}

#[tokio::test]
async fn assets_belong_to_one_customer_and_a_resellers_domain_is_shared_down() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    setup(&e).await;
    ok(&e, "CreateCustomer", "{ customerName: Contoso }").await;
    let out = ok(
        &e,
        "AddAsset",
        "{ customerName: Reseller, assetType: PrimaryDomain, value: Hosting.Example }",
    )
    .await;
    assert_eq!(text(&out, &["shared"]), "false");
    // Its tenant may use it; another customer may not, under any domain type.
    let out = ok(
        &e,
        "AddAsset",
        "{ customerName: Fabrikam, assetType: SecondaryDomain, value: hosting.example }",
    )
    .await;
    assert_eq!(text(&out, &["shared"]), "true");
    let (code, message) = refused(
        &e,
        "AddAsset",
        "{ customerName: Contoso, assetType: VanityDomain, value: hosting.example }",
    )
    .await;
    assert_eq!(code, provisio_engine::codes::E_ASSET_NOT_AVAILABLE);
    assert_eq!(
        message,
        "VanityDomain hosting.example is not available: another customer holds it"
    );
    // Removed by its holder, it is free for another.
    let (_, message) = refused(
        &e,
        "RemoveAsset",
        "{ customerName: Contoso, assetType: PrimaryDomain, value: hosting.example }",
    )
    .await;
    assert!(
        message.contains("holds no PrimaryDomain hosting.example"),
        "{message}"
    );
    ok(
        &e,
        "RemoveAsset",
        "{ customerName: Reseller, assetType: PrimaryDomain, value: hosting.example }",
    )
    .await;
    ok(
        &e,
        "AddAsset",
        "{ customerName: Contoso, assetType: PrimaryDomain, value: hosting.example }",
    )
    .await;
    // Deleting the customer releases its assets.
    ok(&e, "DeleteCustomer", "{ customerName: Contoso }").await;
    assert_eq!(record(&e, "asset/domain/hosting.example"), None);
}

#[tokio::test]
async fn dependencies_are_checked_and_cycles_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    setup(&e).await;
    let out = ok(&e, "CheckDependencies", "{ customerName: Fabrikam }").await;
    let services: Vec<String> = out
        .child("services")
        .unwrap()
        .elements()
        .map(Element::string_value)
        .collect();
    assert_eq!(services, ["HostedActiveDirectory", "HostedEmail"]);
    // One service of the plan: what it needs is looked for in the whole plan (it once was
    // looked for among the named service alone, and refused).
    let out = ok(
        &e,
        "CheckDependencies",
        "{ customerName: Fabrikam, serviceName: HostedEmail }",
    )
    .await;
    let services: Vec<String> = out
        .child("services")
        .unwrap()
        .elements()
        .map(Element::string_value)
        .collect();
    assert_eq!(services, ["HostedEmail", "HostedActiveDirectory"]);
    let (code, message) = refused(
        &e,
        "CreatePlan",
        "{ planName: MailOnly, services: { service: HostedEmail } }",
    )
    .await;
    assert_eq!(code, provisio_engine::codes::E_DEPENDENCY_MISSING);
    assert_eq!(
        message,
        "service HostedEmail needs HostedActiveDirectory, which plan MailOnly does not include"
    );
    let (_, message) = refused(
        &e,
        "CheckDependencies",
        "{ planName: Basic, serviceName: HostedEmail }",
    )
    .await;
    assert_eq!(message, "plan Basic does not include service HostedEmail");
    let (_, message) = refused(
        &e,
        "AddServiceDependency",
        "{ serviceName: HostedActiveDirectory, dependsOn: HostedEmail }",
    )
    .await;
    assert!(message.contains("would be a cycle"), "{message}");
}

/// 30 transactions charge one mailbox each against `maxMailboxes` 10 at once: exactly ten
/// pass, the others are refused naming the plan and the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_charges_never_pass_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    setup(&e).await;
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            run(
                &e,
                "CheckPlanLimit",
                "{ customerName: Fabrikam, limit: maxMailboxes }",
            )
            .await
        }));
    }
    let mut passed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.state {
            TxnState::Committed => passed += 1,
            _ => assert_eq!(
                r.failure.unwrap().message,
                "plan Gold allows 10 mailboxes; organization Fabrikam has 10"
            ),
        }
    }
    assert_eq!(passed, 10);
    let c = record(&e, "customer/Fabrikam").unwrap();
    assert_eq!(c["usage"]["maxMailboxes"], 10);
}

#[tokio::test]
async fn bad_input_names_the_field_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    setup(&e).await;
    let before = record(&e, "customer/Fabrikam").unwrap();
    let cases = [
        (
            "CreateCustomer",
            "{ customerName: Fabrikam }",
            "customer Fabrikam already exists",
        ),
        (
            "CreateCustomer",
            "{ customerName: \"a\\x01b\" }",
            "input `customerName` holds a control character",
        ),
        (
            "CreateCustomer",
            "{ customerName: x, type: robot }",
            "input `type` must be one of organization, user",
        ),
        (
            "CreateCustomer",
            "{ customerName: x, parent: Nobody }",
            "customer Nobody does not exist",
        ),
        (
            "CreateCustomer",
            "{ customerName: x, planName: Diamond }",
            "plan Diamond does not exist",
        ),
        (
            "CreateCustomer",
            "{ customerName: x, parent: Fabrikam, planName: Platinum }",
            "plan Platinum is not available",
        ),
        (
            "CreatePlan",
            "{ planName: Gold }",
            "plan Gold already exists",
        ),
        (
            "CreatePlan",
            "{ planName: \"Bad/Name\" }",
            "input `planName` may hold letters, digits",
        ),
        (
            "CreatePlan",
            "{ planName: Neg, limits: { maxUsers: \"-1\" } }",
            "input `limits/maxUsers` must be a whole number",
        ),
        (
            "CreatePlan",
            "{ planName: X, services: { service: Telepathy } }",
            "service Telepathy does not exist",
        ),
        (
            "AddService",
            "{ serviceName: hostedemail }",
            "service HostedEmail already exists",
        ),
        (
            "ChangeCustomerPlan",
            "{ customerName: Fabrikam, planName: Diamond }",
            "plan Diamond does not exist",
        ),
        (
            "CheckPlanLimit",
            "{ customerName: Fabrikam, limit: \"max users\" }",
            "input `limit` is a limit's name",
        ),
        (
            "CheckPlanLimit",
            "{ customerName: Fabrikam, limit: maxUsers, amount: \"-2\" }",
            "input `amount` must be a whole number",
        ),
        (
            "AddAsset",
            "{ customerName: Fabrikam, assetType: PrimaryDomain, value: \"not a domain\" }",
            "input `value` is not a domain name",
        ),
        (
            "AddAvailablePlansToCustomer",
            "{ customerName: Fabrikam, availablePlans: { planName: Platinum } }",
            "plan Platinum is not available to organization Fabrikam (the plans organization Reseller offers: Gold, Basic)",
        ),
        (
            "DeleteCustomer",
            "{ customerName: Reseller }",
            "organization Reseller still holds 1 customers",
        ),
        (
            "ReleasePlanLimit",
            "{ customerName: Fabrikam, limit: maxUsers }",
            "it cannot release 1",
        ),
    ];
    for (procedure, with, want) in cases {
        let (_, message) = refused(&e, procedure, with).await;
        assert!(message.contains(want), "{procedure} {with}: {message}");
        assert_eq!(
            record(&e, "customer/Fabrikam").unwrap(),
            before,
            "{procedure} {with}"
        );
        assert_eq!(record(&e, "customer/x"), None, "{procedure} {with}");
        assert_eq!(record(&e, "plan/neg"), None, "{procedure} {with}");
    }
}

/// `AddService` and `CreatePlan` with flagIgnoreAlreadyExistsError: the same definition again
/// is success with no change (flagSkipAction 1); a plan with other services or limits is still
/// refused (plans cannot be changed); without the flag an existing one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_services_and_plans_are_no_change_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    setup(&e).await;
    let gold = record(&e, "plan/gold").unwrap();
    let service = record(&e, "service/hostedemail").unwrap();
    let out = ok(
        &e,
        "AddService",
        "{ serviceName: hostedemail, description: other, flagIgnoreAlreadyExistsError: \"1\" }",
    )
    .await;
    assert_eq!(text(&out, &["flagSkipAction"]), "1");
    assert_eq!(record(&e, "service/hostedemail").unwrap(), service);
    let same = "{ planName: Gold, services: { service: [HostedEmail, HostedActiveDirectory] }, limits: { maxUsers: \"2\", mailboxQuotaKB: \"2048\", maxMailboxes: \"10\" }, flagIgnoreAlreadyExistsError: \"1\" }";
    let out = ok(&e, "CreatePlan", same).await;
    assert_eq!(text(&out, &["flagSkipAction"]), "1");
    assert_eq!(record(&e, "plan/gold").unwrap(), gold);
    let (code, msg) = refused(&e, "CreatePlan", &same.replace("\"2048\"", "\"4096\"")).await;
    assert_eq!(code, 0x8007_00B7, "{msg}");
    assert!(
        msg.contains("plan Gold already exists with other services or limits"),
        "{msg}"
    );
    let (_, msg) = refused(&e, "AddService", "{ serviceName: HostedEmail }").await;
    assert!(msg.contains("service HostedEmail already exists"), "{msg}");
    let (_, msg) = refused(&e, "CreatePlan", &same.replace("\"1\" }", "maybe }")).await;
    assert!(msg.contains("flagIgnoreAlreadyExistsError"), "{msg}");
    assert_eq!(record(&e, "plan/gold").unwrap(), gold);
    // A new plan with the flag is created as usual.
    let out = ok(&e, "CreatePlan", "{ planName: Tin, services: { service: HostedActiveDirectory }, flagIgnoreAlreadyExistsError: \"1\" }").await;
    assert!(out.child("flagSkipAction").is_none());
    assert!(record(&e, "plan/tin").is_some());
}
