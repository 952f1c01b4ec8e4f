//! Managed Plans (namespace `Managed Plans`, provider id `ManagedPlans`): the plan manager's
//! bookkeeping. Customers (organizations or users, with a parent customer), services with
//! dependencies, plans (services + limits such as `maxUsers` or `mailboxQuotaKB`), the plan
//! each customer has and the plans it may choose from, the assets it holds (domains,
//! mailbox GUIDs) and a short history of events. Other namespaces ask it before they create
//! anything: `CheckPlanLimit`, `CheckDependencies`, `AddAsset`.
//!
//! Every record lives in provider state, so it commits and rolls back with the transaction;
//! no call returns an undo record (the engine restores the keys a step wrote). Keys (names
//! escaped; plan, service and asset names lower-cased, as they compare case-insensitively):
//!
//! - `customer/<name>`: kind, parent, plan (a copy of the plan taken when it was assigned,
//!   so a limit check reads only the customer), available plans, children, usage of counted
//!   limits, assets, events;
//! - `plan/<name>`, `service/<name>`: definitions;
//! - `asset/domain/<domain>` (every `*Domain` type) and `asset/<type>/<value>`: the holder.
//!
//! Limits whose name starts with `max` are counts (`maxUsers`: usage is kept per customer and
//! charged by `CreateCustomer` and `CheckPlanLimit`); the others are per-item ceilings
//! (`mailboxQuotaKB`: the amount asked for must not exceed it). Reference:
//! `docs/providers/plans.md`.

use crate::bookkeeping::{
    check_name, esc, field, flag, one_of, preview_of, remove_children, req_field, spec, text,
    Records, MAX_SIZE,
};
use crate::common::input;
use async_trait::async_trait;
use provisio_engine::codes::{
    E_ALREADY_EXISTS, E_ASSET_NOT_AVAILABLE, E_DEPENDENCY_MISSING, E_NOT_FOUND, E_PLAN_LIMIT,
};
use provisio_engine::data::Element;
use provisio_engine::model::ProcKind;
use provisio_engine::provider::{
    Call, Done, Outcome, Preview, ProcedureSpec, Provider, ProviderError,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The provider id (`providerSource`).
pub const PROVIDER: &str = "ManagedPlans";
/// The namespace its procedures are published under.
pub const NAMESPACE: &str = "Managed Plans";

/// Longest customer name (an LDAP path or a UPN fits).
const MAX_CUSTOMER: usize = 1024;
/// Longest plan, service or limit name.
const MAX_NAME: usize = 128;
/// Events kept per customer (the latest).
const MAX_EVENTS: usize = 50;
/// The asset types MPS names; others are accepted when they are plain names.
const DOMAIN_ASSETS: [&str; 3] = ["PrimaryDomain", "SecondaryDomain", "VanityDomain"];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ServiceRec {
    name: String,
    #[serde(default)]
    description: String,
    /// Services it needs (their names as registered).
    #[serde(default)]
    depends: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct PlanRec {
    name: String,
    #[serde(default)]
    description: String,
    services: Vec<String>,
    limits: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EventRec {
    kind: String,
    detail: String,
    transaction: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct AssetRec {
    customer: String,
    kind: String,
    value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CustomerRec {
    name: String,
    /// `organization` or `user`.
    kind: String,
    parent: Option<String>,
    /// The plan as it was when assigned.
    plan: Option<PlanRec>,
    #[serde(default)]
    available: Vec<String>,
    #[serde(default)]
    children: u64,
    /// Usage of counted limits (`maxUsers` → users held).
    #[serde(default)]
    usage: BTreeMap<String, u64>,
    #[serde(default)]
    assets: Vec<AssetRec>,
    #[serde(default)]
    events: Vec<EventRec>,
}

impl CustomerRec {
    fn event(&mut self, call: &Call, kind: &str, detail: String) {
        self.events.push(EventRec {
            kind: kind.to_string(),
            detail,
            transaction: call.context.txn_id.to_string(),
        });
        let over = self.events.len().saturating_sub(MAX_EVENTS);
        self.events.drain(..over);
    }

    fn label(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }
}

fn customer_key(name: &str) -> String {
    format!("customer/{}", esc(name))
}

fn plan_key(name: &str) -> String {
    format!("plan/{}", esc(&name.to_lowercase()))
}

fn service_key(name: &str) -> String {
    format!("service/{}", esc(&name.to_lowercase()))
}

fn is_domain(kind: &str) -> bool {
    DOMAIN_ASSETS.contains(&kind)
}

fn asset_key(kind: &str, value: &str) -> String {
    if is_domain(kind) {
        format!("asset/domain/{}", esc(value))
    } else {
        format!("asset/{}/{}", esc(&kind.to_lowercase()), esc(value))
    }
}

/// A plan, service or limit name: letters, digits, spaces and `.-_`, starting with a letter
/// or digit.
fn plain_name(at: &str, v: &str) -> Result<String, ProviderError> {
    let v = check_name(at, v, MAX_NAME)?;
    let ok = v.chars().next().is_some_and(char::is_alphanumeric)
        && v.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '.' | '-' | '_'));
    if !ok {
        return Err(ProviderError::invalid(format!(
            "input `{at}` may hold letters, digits, spaces and `.-_` only, got {v:?}"
        )));
    }
    Ok(v)
}

/// A domain name: two or more labels of letters, digits and `-` (not at either end), each
/// at most 63 characters, 253 in all; returned lower-case.
pub(crate) fn domain(at: &str, v: &str) -> Result<String, ProviderError> {
    let d = v.trim().trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = d.split('.').collect();
    let ok = d.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !ok {
        return Err(ProviderError::invalid(format!(
            "input `{at}` is not a domain name (labels of letters, digits and `-`, e.g. fabrikam.com), got {v:?}"
        )));
    }
    Ok(d)
}

fn customer_name(ed: &Element) -> Result<String, ProviderError> {
    let v = field(ed, "customerName")
        .or_else(|| field(ed, "name"))
        .ok_or_else(|| ProviderError::invalid("input `customerName` is required"))?;
    check_name("customerName", &v, MAX_CUSTOMER)
}

fn not_found(what: &str, name: &str, hint: &str) -> ProviderError {
    ProviderError::Permanent {
        code: E_NOT_FOUND,
        message: format!("{what} {name} does not exist ({hint})"),
    }
}

async fn customer(r: &Records<'_>, name: &str) -> Result<CustomerRec, ProviderError> {
    r.get(&customer_key(name))
        .await?
        .ok_or_else(|| not_found("customer", name, "CreateCustomer creates it"))
}

async fn plan(r: &Records<'_>, name: &str) -> Result<PlanRec, ProviderError> {
    r.get(&plan_key(name))
        .await?
        .ok_or_else(|| not_found("plan", name, "CreatePlan creates it"))
}

/// For another provider of this crate (the mail provider): the plan that governs a
/// mailbox — `plan_name` when given, else the plan assigned to `customer` (when that customer
/// exists and has one) — with its `limit` if it sets it. `state` is a view of Managed Plans'
/// state ([`provisio_engine::ProviderState::read_of`]). A named plan that does not exist is
/// an error naming it.
pub(crate) async fn governing_limit(
    state: &provisio_engine::ProviderState,
    plan_name: Option<&str>,
    customer: &str,
    limit: &str,
) -> Result<Option<(String, Option<u64>)>, ProviderError> {
    let r = Records::new(state);
    let p = match plan_name {
        Some(name) => Some(plan(&r, name).await?),
        None => r
            .get::<CustomerRec>(&customer_key(customer))
            .await?
            .and_then(|c| c.plan),
    };
    Ok(p.map(|p| {
        let value = p.limits.get(limit).copied();
        (p.name, value)
    }))
}

async fn service(r: &Records<'_>, name: &str) -> Result<ServiceRec, ProviderError> {
    r.get(&service_key(name))
        .await?
        .ok_or_else(|| not_found("service", name, "AddService registers it"))
}

/// "users" for `maxUsers`: what a counted limit counts.
fn counted(limit: &str) -> String {
    let rest = limit.strip_prefix("max").unwrap_or(limit);
    let mut c = rest.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => limit.to_string(),
    }
}

fn limit_refused(plan: &PlanRec, limit: &str, value: u64, who: &str, has: u64) -> ProviderError {
    ProviderError::Permanent {
        code: E_PLAN_LIMIT,
        message: format!(
            "plan {} allows {value} {}; {who} has {has}",
            plan.name,
            counted(limit)
        ),
    }
}

/// The plans offered to a customer: its own list, else the nearest ancestor's that has one
/// (`own` and then the chain from `parent` up); with who offers them. `None`: no list
/// anywhere, any plan.
async fn offering(
    r: &Records<'_>,
    own: &[String],
    own_label: String,
    parent: Option<String>,
) -> Result<Option<(Vec<String>, String)>, ProviderError> {
    if !own.is_empty() {
        return Ok(Some((own.to_vec(), own_label)));
    }
    let mut at = parent;
    let mut hops = 0;
    while let Some(p) = at {
        let c = customer(r, &p).await?;
        if !c.available.is_empty() {
            return Ok(Some((c.available.clone(), c.label())));
        }
        hops += 1;
        if hops > 64 {
            break;
        }
        at = c.parent;
    }
    Ok(None)
}

/// Refuses `plan` for `who` when `offer` (see [`offering`]) does not hold it.
fn allowed(
    who: &str,
    offer: &Option<(Vec<String>, String)>,
    plan: &PlanRec,
) -> Result<(), ProviderError> {
    match offer {
        Some((l, owner)) if !l.iter().any(|p| p.eq_ignore_ascii_case(&plan.name)) => {
            Err(ProviderError::invalid(format!(
                "plan {} is not available to {who} (the plans {owner} offers: {})",
                plan.name,
                l.join(", ")
            )))
        }
        _ => Ok(()),
    }
}

/// Refuses `plan` for `c` when its usage already passes one of the plan's counted limits.
fn fits_usage(c: &CustomerRec, plan: &PlanRec) -> Result<(), ProviderError> {
    for (limit, value) in &plan.limits {
        let used = c.usage.get(limit).copied().unwrap_or(0);
        if limit.starts_with("max") && used > *value {
            return Err(limit_refused(plan, limit, *value, &c.label(), used));
        }
    }
    Ok(())
}

/// Charges `amount` of the counted limit `limit` to `c`, refused when `plan` sets that limit
/// and the charge would pass it. Usage is counted whether or not a plan limits it, so a plan
/// that sets the limit later starts from what the customer really holds.
fn charge(
    c: &mut CustomerRec,
    plan: Option<&PlanRec>,
    limit: &str,
    amount: u64,
) -> Result<(), ProviderError> {
    let used = c.usage.get(limit).copied().unwrap_or(0);
    if let Some(plan) = plan {
        if let Some(&value) = plan.limits.get(limit) {
            if used + amount > value {
                return Err(limit_refused(plan, limit, value, &c.label(), used));
            }
        }
    }
    c.usage.insert(limit.to_string(), used + amount);
    Ok(())
}

/// Gives back `amount` of the counted limit `limit`: a count back at 0 leaves no entry, so
/// a customer whose every charge was given back is as it was before the first one.
fn give_back(c: &mut CustomerRec, limit: &str, amount: u64) {
    let left = c
        .usage
        .get(limit)
        .copied()
        .unwrap_or(0)
        .saturating_sub(amount);
    if left == 0 {
        c.usage.remove(limit);
    } else {
        c.usage.insert(limit.to_string(), left);
    }
}

/// The counted limit a new child of `kind` uses up in its parent's plan.
fn child_limit(kind: &str) -> &'static str {
    if kind == "user" {
        "maxUsers"
    } else {
        "maxOrganizations"
    }
}

fn names_under(ed: &Element, list: &str, item: &str) -> Vec<String> {
    ed.child(list)
        .map(|l| {
            l.elements()
                .filter(|e| e.name == item)
                .map(|e| e.string_value().trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The Managed Plans provider. Stateless in memory: everything it knows is in provider
/// state.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlansProvider;

impl PlansProvider {
    /// The provider.
    pub fn new() -> PlansProvider {
        PlansProvider
    }

    async fn run(&self, call: &Call, r: &Records<'_>) -> Result<(Element, String), ProviderError> {
        let ed = &call.execute_data;
        match call.context.procedure.as_str() {
            "AddService" => add_service(ed, r).await,
            "AddServiceDependency" => add_dependency(ed, r).await,
            "CreatePlan" => create_plan(ed, r).await,
            "CreateCustomer" => create_customer(call, r).await,
            "DeleteCustomer" => delete_customer(call, r).await,
            "AddAvailablePlansToCustomer" => add_available(call, r).await,
            "ChangeCustomerPlan" => change_plan(call, r).await,
            "GetPlansByCustomer" => plans_by_customer(ed, r).await,
            "CheckDependencies" => check_dependencies(ed, r).await,
            "CheckPlanLimit" => check_limit(call, r).await,
            "ReleasePlanLimit" => release_limit(call, r).await,
            "AddAsset" => add_asset(call, r).await,
            "RemoveAsset" => remove_asset(call, r).await,
            "GetCustomer" => get_customer(ed, r).await,
            other => Err(ProviderError::Unsupported(format!(
                "{NAMESPACE} has no procedure `{other}`"
            ))),
        }
    }
}

async fn add_service(ed: &Element, r: &Records<'_>) -> Result<(Element, String), ProviderError> {
    let name = plain_name("serviceName", &req_field(ed, "serviceName", "serviceName")?)?;
    let key = service_key(&name);
    let ignore = flag(
        "flagIgnoreAlreadyExistsError",
        field(ed, "flagIgnoreAlreadyExistsError"),
        false,
    )?;
    if let Some(old) = r.get::<ServiceRec>(&key).await? {
        if ignore {
            let mut out = ed.clone();
            remove_children(&mut out, "flagSkipAction");
            out.push(text("flagSkipAction", "1"));
            return Ok((out, format!("service {} exists: no change", old.name)));
        }
        return Err(ProviderError::Permanent {
            code: E_ALREADY_EXISTS,
            message: format!("service {} already exists", old.name),
        });
    }
    let rec = ServiceRec {
        name: name.clone(),
        description: field(ed, "description").unwrap_or_default(),
        depends: Vec::new(),
    };
    r.put(&key, &rec).await?;
    Ok((ed.clone(), format!("add service {name}")))
}

/// Every service `start` needs, directly or through others (reads each once).
async fn closure(r: &Records<'_>, start: &ServiceRec) -> Result<Vec<String>, ProviderError> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    let mut todo: Vec<String> = start.depends.clone();
    while let Some(n) = todo.pop() {
        if !seen.insert(n.to_lowercase()) {
            continue;
        }
        let s = service(r, &n).await?;
        todo.extend(s.depends.iter().cloned());
        out.push(s.name);
    }
    Ok(out)
}

async fn add_dependency(ed: &Element, r: &Records<'_>) -> Result<(Element, String), ProviderError> {
    let name = plain_name("serviceName", &req_field(ed, "serviceName", "serviceName")?)?;
    let needs = plain_name("dependsOn", &req_field(ed, "dependsOn", "dependsOn")?)?;
    let mut s = service(r, &name).await?;
    let d = service(r, &needs).await?;
    if d.name.eq_ignore_ascii_case(&s.name) {
        return Err(ProviderError::invalid(format!(
            "service {} cannot depend on itself",
            s.name
        )));
    }
    if closure(r, &d)
        .await?
        .iter()
        .any(|n| n.eq_ignore_ascii_case(&s.name))
    {
        return Err(ProviderError::invalid(format!(
            "service {} already needs {} (directly or through others): a dependency the other way would be a cycle",
            d.name, s.name
        )));
    }
    if !s.depends.iter().any(|x| x.eq_ignore_ascii_case(&d.name)) {
        s.depends.push(d.name.clone());
        r.put(&service_key(&name), &s).await?;
    }
    Ok((ed.clone(), format!("service {} needs {}", s.name, d.name)))
}

/// Refuses a plan whose services miss one that another needs.
/// Checks that everything `services` need is in `plan_services` (the plan's whole list:
/// a service named alone may need another service of the same plan).
async fn plan_complete(
    r: &Records<'_>,
    services: &[String],
    plan_services: &[String],
    what: &str,
) -> Result<(), ProviderError> {
    let has: BTreeSet<String> = plan_services.iter().map(|s| s.to_lowercase()).collect();
    for name in services {
        let s = service(r, name).await?;
        for need in closure(r, &s).await? {
            if !has.contains(&need.to_lowercase()) {
                return Err(ProviderError::Permanent {
                    code: E_DEPENDENCY_MISSING,
                    message: format!(
                        "service {} needs {need}, which {what} does not include",
                        s.name
                    ),
                });
            }
        }
    }
    Ok(())
}

async fn create_plan(ed: &Element, r: &Records<'_>) -> Result<(Element, String), ProviderError> {
    let name = plain_name("planName", &req_field(ed, "planName", "planName")?)?;
    let key = plan_key(&name);
    let ignore = flag(
        "flagIgnoreAlreadyExistsError",
        field(ed, "flagIgnoreAlreadyExistsError"),
        false,
    )?;
    let existing = r.get::<PlanRec>(&key).await?;
    if let (Some(old), false) = (&existing, ignore) {
        return Err(ProviderError::Permanent {
            code: E_ALREADY_EXISTS,
            message: format!("plan {} already exists", old.name),
        });
    }
    let mut services = Vec::new();
    for (i, s) in names_under(ed, "services", "service").iter().enumerate() {
        let at = format!("services/service[{}]", i + 1);
        let s = service(r, &plain_name(&at, s)?).await?;
        if !services.contains(&s.name) {
            services.push(s.name);
        }
    }
    let mut limits = BTreeMap::new();
    for e in ed.child("limits").iter().flat_map(|l| l.elements()) {
        let at = format!("limits/{}", e.name);
        let ok_name = e
            .name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && e.name.chars().all(|c| c.is_ascii_alphanumeric())
            && e.name.len() <= MAX_NAME;
        if !ok_name {
            return Err(ProviderError::invalid(format!(
                "input `{at}`: a limit's name is a plain word (maxUsers, mailboxQuotaKB)"
            )));
        }
        let v = e.string_value();
        let value = match v.trim().parse::<u64>() {
            Ok(n) if n <= MAX_SIZE => n,
            _ => {
                return Err(ProviderError::invalid(format!(
                    "input `{at}` must be a whole number from 0 to {MAX_SIZE}, got {v:?}"
                )))
            }
        };
        limits.insert(e.name.to_string(), value);
    }
    // flagIgnoreAlreadyExistsError: the same plan again is no change; a different one is
    // still refused (plans cannot be changed once created).
    if let Some(old) = existing {
        let same_services = old.services.len() == services.len()
            && services
                .iter()
                .all(|x| old.services.iter().any(|o| o.eq_ignore_ascii_case(x)));
        if same_services && old.limits == limits {
            let mut out = ed.clone();
            remove_children(&mut out, "flagSkipAction");
            out.push(text("flagSkipAction", "1"));
            return Ok((out, format!("plan {} exists as asked: no change", old.name)));
        }
        return Err(ProviderError::Permanent {
            code: E_ALREADY_EXISTS,
            message: format!(
                "plan {} already exists with other services or limits (plans cannot be changed once created)",
                old.name
            ),
        });
    }
    plan_complete(r, &services, &services, &format!("plan {name}")).await?;
    let rec = PlanRec {
        name: name.clone(),
        description: field(ed, "description").unwrap_or_default(),
        services,
        limits,
    };
    r.put(&key, &rec).await?;
    Ok((
        ed.clone(),
        format!(
            "create plan {name} (services: {}; limits: {})",
            rec.services.join(", "),
            rec.limits
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

async fn create_customer(call: &Call, r: &Records<'_>) -> Result<(Element, String), ProviderError> {
    let ed = &call.execute_data;
    let name = customer_name(ed)?;
    let kind = match field(ed, "type") {
        None => "organization",
        Some(t) => one_of("type", &t, &["organization", "user"])?,
    };
    let key = customer_key(&name);
    // Read (and lock) the absent key: no other transaction can create the same customer.
    if r.get::<CustomerRec>(&key).await?.is_some() {
        return Err(ProviderError::Permanent {
            code: E_ALREADY_EXISTS,
            message: format!("customer {name} already exists"),
        });
    }
    let parent_name = field(ed, "parent")
        .map(|p| check_name("parent", &p, MAX_CUSTOMER))
        .transpose()?;
    let mut parent = match &parent_name {
        Some(p) => Some(customer(r, p).await?),
        None => None,
    };
    if let Some(p) = &parent {
        if p.kind != "organization" {
            return Err(ProviderError::invalid(format!(
                "input `parent`: {} is a user; only an organization holds other customers",
                p.name
            )));
        }
    }
    let mut c = CustomerRec {
        name: name.clone(),
        kind: kind.to_string(),
        parent: parent_name.clone(),
        plan: None,
        available: Vec::new(),
        children: 0,
        usage: BTreeMap::new(),
        assets: Vec::new(),
        events: Vec::new(),
    };
    c.event(call, "Created", format!("{kind} {name}"));
    if let Some(pn) = field(ed, "planName") {
        let p = plan(r, &plain_name("planName", &pn)?).await?;
        let offer = offering(r, &[], c.label(), parent_name.clone()).await?;
        allowed(&c.label(), &offer, &p)?;
        c.event(call, "PlanAdded", p.name.clone());
        c.plan = Some(p);
    }
    let mut said = format!("create {kind} {name}");
    if let Some(p) = parent.as_mut() {
        let pp = p.plan.clone();
        charge(p, pp.as_ref(), child_limit(kind), 1)?;
        p.children += 1;
        r.put(&customer_key(&p.name), &*p).await?;
        said.push_str(&format!(" under {}", p.name));
    }
    r.put(&key, &c).await?;
    Ok((ed.clone(), said))
}

async fn delete_customer(call: &Call, r: &Records<'_>) -> Result<(Element, String), ProviderError> {
    let ed = &call.execute_data;
    let name = customer_name(ed)?;
    let c = customer(r, &name).await?;
    if c.children > 0 {
        return Err(ProviderError::invalid(format!(
            "{} still holds {} customers; delete them first",
            c.label(),
            c.children
        )));
    }
    if let Some(pn) = &c.parent {
        let mut p = customer(r, pn).await?;
        p.children = p.children.saturating_sub(1);
        give_back(&mut p, child_limit(&c.kind), 1);
        r.put(&customer_key(pn), &p).await?;
    }
    for a in &c.assets {
        r.delete(&asset_key(&a.kind, &a.value)).await?;
    }
    r.delete(&customer_key(&name)).await?;
    Ok((
        ed.clone(),
        format!(
            "delete {} and release its {} assets",
            c.label(),
            c.assets.len()
        ),
    ))
}

async fn add_available(call: &Call, r: &Records<'_>) -> Result<(Element, String), ProviderError> {
    let ed = &call.execute_data;
    let name = customer_name(ed)?;
    let mut c = customer(r, &name).await?;
    let wanted = names_under(ed, "availablePlans", "planName");
    if wanted.is_empty() {
        return Err(ProviderError::invalid(
            "input `availablePlans` holds no `planName`",
        ));
    }
    // A customer is offered only what its ancestors offer (when one of them limits it).
    let offer = offering(r, &[], c.label(), c.parent.clone()).await?;
    let mut added = Vec::new();
    for (i, pn) in wanted.iter().enumerate() {
        let p = plan(
            r,
            &plain_name(&format!("availablePlans/planName[{}]", i + 1), pn)?,
        )
        .await?;
        allowed(&c.label(), &offer, &p)?;
        if !c.available.iter().any(|a| a.eq_ignore_ascii_case(&p.name)) {
            c.available.push(p.name.clone());
            added.push(p.name);
        }
    }
    c.event(call, "AvailablePlansAdded", added.join(", "));
    r.put(&customer_key(&name), &c).await?;
    Ok((
        ed.clone(),
        format!("offer {} plans {}", c.label(), added.join(", ")),
    ))
}

async fn change_plan(call: &Call, r: &Records<'_>) -> Result<(Element, String), ProviderError> {
    let ed = &call.execute_data;
    let name = customer_name(ed)?;
    let mut c = customer(r, &name).await?;
    let pn = plain_name("planName", &req_field(ed, "planName", "planName")?)?;
    let p = plan(r, &pn).await?;
    let offer = offering(r, &c.available, c.label(), c.parent.clone()).await?;
    allowed(&c.label(), &offer, &p)?;
    fits_usage(&c, &p)?;
    let previous = c.plan.as_ref().map(|x| x.name.clone());
    let kind = if previous.is_some() {
        "PlanChange"
    } else {
        "PlanAdded"
    };
    c.event(
        call,
        kind,
        format!("{} -> {}", previous.as_deref().unwrap_or("(none)"), p.name),
    );
    c.plan = Some(p.clone());
    r.put(&customer_key(&name), &c).await?;
    let mut out = ed.clone();
    remove_children(&mut out, "previousPlanName");
    if let Some(prev) = &previous {
        out.push(text("previousPlanName", prev));
    }
    Ok((
        out,
        format!(
            "give {} plan {} (was {})",
            c.label(),
            p.name,
            previous.as_deref().unwrap_or("none")
        ),
    ))
}

/// The plan that applies to `c`: its own, else its parent's; with who holds it.
async fn effective_plan(
    r: &Records<'_>,
    c: &CustomerRec,
) -> Result<Option<(PlanRec, bool)>, ProviderError> {
    if let Some(p) = &c.plan {
        return Ok(Some((p.clone(), false)));
    }
    match &c.parent {
        Some(pn) => Ok(customer(r, pn).await?.plan.map(|p| (p, true))),
        None => Ok(None),
    }
}

fn plan_element(p: &PlanRec) -> Element {
    let mut e = Element::new("plan");
    e.push(text("planName", &p.name));
    let mut s = Element::new("services");
    for x in &p.services {
        s.push(text("service", x));
    }
    e.push(s);
    let mut l = Element::new("limits");
    for (k, v) in &p.limits {
        l.push(text(k, v));
    }
    e.push(l);
    e
}

async fn plans_by_customer(
    ed: &Element,
    r: &Records<'_>,
) -> Result<(Element, String), ProviderError> {
    let name = customer_name(ed)?;
    let c = customer(r, &name).await?;
    let mut out = ed.clone();
    for n in ["planName", "inherited", "plan", "availablePlans"] {
        remove_children(&mut out, n);
    }
    let eff = effective_plan(r, &c).await?;
    let mut available = c.available.clone();
    if available.is_empty() {
        if let Some(pn) = &c.parent {
            available = customer(r, pn).await?.available;
        }
    }
    if let Some((p, inherited)) = &eff {
        out.push(text("planName", &p.name));
        out.push(text("inherited", inherited));
        out.push(plan_element(p));
    }
    let mut list = Element::new("availablePlans");
    for a in &available {
        list.push(text("planName", a));
    }
    out.push(list);
    Ok((
        out,
        format!(
            "{} has plan {}",
            c.label(),
            eff.map(|(p, _)| p.name).unwrap_or_else(|| "none".into())
        ),
    ))
}

async fn check_dependencies(
    ed: &Element,
    r: &Records<'_>,
) -> Result<(Element, String), ProviderError> {
    let (p, what) = match field(ed, "planName") {
        Some(pn) => {
            let p = plan(r, &plain_name("planName", &pn)?).await?;
            let what = format!("plan {}", p.name);
            (p, what)
        }
        None => {
            let c = customer(r, &customer_name(ed)?).await?;
            let (p, _) = effective_plan(r, &c)
                .await?
                .ok_or_else(|| ProviderError::Permanent {
                    code: E_DEPENDENCY_MISSING,
                    message: format!(
                        "{} has no plan (ChangeCustomerPlan gives it one)",
                        c.label()
                    ),
                })?;
            let what = format!("plan {} of {}", p.name, c.label());
            (p, what)
        }
    };
    let services = match field(ed, "serviceName") {
        Some(s) => {
            let s = service(r, &plain_name("serviceName", &s)?).await?;
            if !p.services.iter().any(|x| x.eq_ignore_ascii_case(&s.name)) {
                return Err(ProviderError::Permanent {
                    code: E_DEPENDENCY_MISSING,
                    message: format!("{what} does not include service {}", s.name),
                });
            }
            vec![s.name]
        }
        None => p.services.clone(),
    };
    plan_complete(r, &services, &p.services, &what).await?;
    let mut all: Vec<String> = services.clone();
    for s in &services {
        for n in closure(r, &service(r, s).await?).await? {
            if !all.contains(&n) {
                all.push(n);
            }
        }
    }
    let mut out = ed.clone();
    remove_children(&mut out, "services");
    let mut list = Element::new("services");
    for s in &all {
        list.push(text("service", s));
    }
    out.push(list);
    Ok((out, format!("{what}: services {} complete", all.join(", "))))
}

/// `limit` and `amount` of a limit call.
fn limit_input(ed: &Element) -> Result<(String, u64), ProviderError> {
    let limit = req_field(ed, "limit", "limit")?;
    if !(limit
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && limit.chars().all(|c| c.is_ascii_alphanumeric()))
    {
        return Err(ProviderError::invalid(format!(
            "input `limit` is a limit's name (maxUsers, mailboxQuotaKB), got {limit:?}"
        )));
    }
    let amount = match field(ed, "amount") {
        None => 1,
        Some(a) => match a.parse::<u64>() {
            Ok(n) if n <= MAX_SIZE => n,
            _ => {
                return Err(ProviderError::invalid(format!(
                    "input `amount` must be a whole number from 0 to {MAX_SIZE}, got {a:?}"
                )))
            }
        },
    };
    Ok((limit, amount))
}

async fn check_limit(call: &Call, r: &Records<'_>) -> Result<(Element, String), ProviderError> {
    let ed = &call.execute_data;
    let name = customer_name(ed)?;
    let (limit, amount) = limit_input(ed)?;
    let do_charge = flag("charge", field(ed, "charge"), true)?;
    let mut c = customer(r, &name).await?;
    let mut out = ed.clone();
    for n in ["planName", "limitValue", "usage"] {
        remove_children(&mut out, n);
    }
    let plan = effective_plan(r, &c).await?.map(|(p, _)| p);
    if let Some(p) = &plan {
        out.push(text("planName", &p.name));
    }
    let value = plan.as_ref().and_then(|p| p.limits.get(&limit).copied());
    if let Some(value) = value {
        out.push(text("limitValue", value));
    }
    let unlimited = match &plan {
        Some(p) => format!("plan {} sets no {limit}", p.name),
        None => format!("{} has no plan: no limit", c.label()),
    };
    if !limit.starts_with("max") {
        let (Some(p), Some(value)) = (&plan, value) else {
            return Ok((out, unlimited));
        };
        if amount > value {
            return Err(ProviderError::Permanent {
                code: E_PLAN_LIMIT,
                message: format!(
                    "plan {} allows {limit} up to {value}; {} asks for {amount}",
                    p.name,
                    c.label()
                ),
            });
        }
        return Ok((
            out,
            format!("{amount} is within {limit} {value} of plan {}", p.name),
        ));
    }
    // A count is kept whether or not a plan limits it (see `charge`): `usage` always comes
    // back, and what was charged is what the caller records and releases later.
    let used = c.usage.get(&limit).copied().unwrap_or(0);
    if do_charge && amount > 0 {
        charge(&mut c, plan.as_ref(), &limit, amount)?;
        r.put(&customer_key(&name), &c).await?;
    } else if let (Some(p), Some(value)) = (&plan, value) {
        if used + amount > value {
            return Err(limit_refused(p, &limit, value, &c.label(), used));
        }
    }
    let now = if do_charge { used + amount } else { used };
    out.push(text("usage", now));
    let said = match value {
        Some(value) => format!("{} uses {now} of {value} {}", c.label(), counted(&limit)),
        None => format!("{} uses {now} {} ({unlimited})", c.label(), counted(&limit)),
    };
    Ok((out, said))
}

async fn release_limit(call: &Call, r: &Records<'_>) -> Result<(Element, String), ProviderError> {
    let ed = &call.execute_data;
    let name = customer_name(ed)?;
    let (limit, amount) = limit_input(ed)?;
    let mut c = customer(r, &name).await?;
    let used = c.usage.get(&limit).copied().unwrap_or(0);
    if amount > used {
        return Err(ProviderError::invalid(format!(
            "{} uses {used} of {limit}; it cannot release {amount}",
            c.label()
        )));
    }
    give_back(&mut c, &limit, amount);
    r.put(&customer_key(&name), &c).await?;
    Ok((
        ed.clone(),
        format!("{} releases {amount} of {limit}", c.label()),
    ))
}

fn asset_input(ed: &Element) -> Result<(String, String), ProviderError> {
    let kind = plain_name("assetType", &req_field(ed, "assetType", "assetType")?)?;
    let kind = DOMAIN_ASSETS
        .iter()
        .find(|d| d.eq_ignore_ascii_case(&kind))
        .map(|d| d.to_string())
        .unwrap_or(kind);
    let value = req_field(ed, "value", "value")?;
    let value = if is_domain(&kind) {
        domain("value", &value)?
    } else {
        check_name("value", &value, MAX_CUSTOMER)?
    };
    Ok((kind, value))
}

/// Whether `ancestor` is `c`'s parent, or its parent's, … (reads each).
async fn is_ancestor(
    r: &Records<'_>,
    c: &CustomerRec,
    ancestor: &str,
) -> Result<bool, ProviderError> {
    let mut at = c.parent.clone();
    let mut hops = 0;
    while let Some(p) = at {
        if p == ancestor {
            return Ok(true);
        }
        hops += 1;
        if hops > 64 {
            break;
        }
        at = r
            .get::<CustomerRec>(&customer_key(&p))
            .await?
            .and_then(|x| x.parent);
    }
    Ok(false)
}

async fn add_asset(call: &Call, r: &Records<'_>) -> Result<(Element, String), ProviderError> {
    let ed = &call.execute_data;
    let name = customer_name(ed)?;
    let (kind, value) = asset_input(ed)?;
    let mut c = customer(r, &name).await?;
    let key = asset_key(&kind, &value);
    let mut out = ed.clone();
    remove_children(&mut out, "shared");
    if let Some(held) = r.get::<AssetRec>(&key).await? {
        if held.customer == name {
            out.push(text("shared", false));
            return Ok((out, format!("{} already holds {kind} {value}", c.label())));
        }
        // A reseller's domain may be used by the customers under it.
        if is_domain(&kind) && is_ancestor(r, &c, &held.customer).await? {
            out.push(text("shared", true));
            return Ok((
                out,
                format!("{} uses {kind} {value} of {}", c.label(), held.customer),
            ));
        }
        return Err(ProviderError::Permanent {
            code: E_ASSET_NOT_AVAILABLE,
            message: format!("{kind} {value} is not available: another customer holds it"),
        });
    }
    let rec = AssetRec {
        customer: name.clone(),
        kind: kind.clone(),
        value: value.clone(),
    };
    c.assets.push(rec.clone());
    c.event(call, "AssetAdded", format!("{kind} {value}"));
    r.put(&key, &rec).await?;
    r.put(&customer_key(&name), &c).await?;
    out.push(text("shared", false));
    Ok((out, format!("{} takes {kind} {value}", c.label())))
}

async fn remove_asset(call: &Call, r: &Records<'_>) -> Result<(Element, String), ProviderError> {
    let ed = &call.execute_data;
    let name = customer_name(ed)?;
    let (kind, value) = asset_input(ed)?;
    let mut c = customer(r, &name).await?;
    let key = asset_key(&kind, &value);
    match r.get::<AssetRec>(&key).await? {
        Some(held) if held.customer == name => {}
        _ => {
            return Err(ProviderError::Permanent {
                code: E_NOT_FOUND,
                message: format!("{} holds no {kind} {value}", c.label()),
            })
        }
    }
    c.assets.retain(|a| asset_key(&a.kind, &a.value) != key);
    c.event(call, "AssetRemoved", format!("{kind} {value}"));
    r.delete(&key).await?;
    r.put(&customer_key(&name), &c).await?;
    Ok((ed.clone(), format!("{} gives up {kind} {value}", c.label())))
}

async fn get_customer(ed: &Element, r: &Records<'_>) -> Result<(Element, String), ProviderError> {
    let name = customer_name(ed)?;
    let c = customer(r, &name).await?;
    let mut e = Element::new("customer");
    e.push(text("name", &c.name));
    e.push(text("type", &c.kind));
    if let Some(p) = &c.parent {
        e.push(text("parent", p));
    }
    if let Some(p) = &c.plan {
        e.push(text("planName", &p.name));
    }
    let mut l = Element::new("availablePlans");
    for a in &c.available {
        l.push(text("planName", a));
    }
    e.push(l);
    e.push(text("customers", c.children));
    let mut u = Element::new("usage");
    for (k, v) in &c.usage {
        u.push(text(k, v));
    }
    e.push(u);
    let mut a = Element::new("assets");
    for x in &c.assets {
        let mut it = Element::new("asset");
        it.push(text("assetType", &x.kind));
        it.push(text("value", &x.value));
        a.push(it);
    }
    e.push(a);
    let mut ev = Element::new("events");
    for x in &c.events {
        let mut it = Element::new("event");
        it.push(text("type", &x.kind));
        it.push(text("detail", &x.detail));
        it.push(text("transaction", &x.transaction));
        ev.push(it);
    }
    e.push(ev);
    let mut out = ed.clone();
    remove_children(&mut out, "customer");
    out.push(e);
    Ok((out, format!("read {}", c.label())))
}

#[async_trait]
impl Provider for PlansProvider {
    fn name(&self) -> &str {
        PROVIDER
    }

    /// Customers, plans, assets and usage are provider state and nothing else.
    fn effects_in_state_only(&self) -> bool {
        true
    }

    fn namespace(&self) -> String {
        NAMESPACE.to_string()
    }

    fn procedures(&self) -> Vec<ProcedureSpec> {
        let customer = || {
            input(
                "customerName",
                "string",
                true,
                "the customer (organization or user; also `name`)",
            )
        };
        let w = ProcKind::Write;
        let rd = ProcKind::Read;
        vec![
            spec("AddService", w, "Registers a service (HostedActiveDirectory, HostedEmail, …). With flagIgnoreAlreadyExistsError a registered service is no change (flagSkipAction 1).", vec![
                input("serviceName", "string", true, "the service"),
                input("description", "string", false, "what it is"),
                input("flagIgnoreAlreadyExistsError", "bool", false, "an existing service is success, with no change (default false)"),
            ]),
            spec("AddServiceDependency", w, "Records that serviceName needs dependsOn (a cycle is refused).", vec![
                input("serviceName", "string", true, "the service"),
                input("dependsOn", "string", true, "the service it needs"),
            ]),
            spec("CreatePlan", w, "Creates a plan: services/service (each with everything it needs) and limits (maxUsers, mailboxQuotaKB, …: whole numbers). With flagIgnoreAlreadyExistsError the same plan (services and limits) again is no change (flagSkipAction 1); a different one is refused.", vec![
                input("planName", "string", true, "the plan"),
                input("services", "map", false, "service elements"),
                input("limits", "map", false, "one element per limit: its name, its value"),
                input("description", "string", false, "what it is"),
                input("flagIgnoreAlreadyExistsError", "bool", false, "the same plan again is success, with no change (default false)"),
            ]),
            spec("CreateCustomer", w, "Creates a customer (type organization or user) under an optional parent organization, with an optional plan; a user counts against the parent plan's maxUsers.", vec![
                customer(),
                input("type", "string", false, "organization (default) or user"),
                input("parent", "string", false, "the parent organization"),
                input("planName", "string", false, "the plan to give it"),
            ]),
            spec("DeleteCustomer", w, "Deletes a customer without customers under it, releasing its assets and its count in the parent's plan.", vec![customer()]),
            spec("AddAvailablePlansToCustomer", w, "Adds plans the customer (and the customers under it) may choose from.", vec![
                customer(),
                input("availablePlans", "map", true, "planName elements"),
            ]),
            spec("ChangeCustomerPlan", w, "Gives a customer a plan it may choose (refused when its usage already passes one of the plan's counts); returns previousPlanName.", vec![
                customer(),
                input("planName", "string", true, "the new plan"),
            ]),
            spec("GetPlansByCustomer", rd, "The customer's plan (its own, else its parent's: inherited), with its services and limits, and availablePlans.", vec![customer()]),
            spec("CheckDependencies", rd, "Checks that a plan (planName, or the customer's plan) holds every service its services (or serviceName) need; returns services.", vec![
                input("customerName", "string", false, "the customer whose plan is checked"),
                input("planName", "string", false, "the plan to check"),
                input("serviceName", "string", false, "check only this service"),
            ]),
            spec("CheckPlanLimit", w, "Checks amount against a limit of the customer's plan: a count (max…) is charged to the customer's usage unless charge is false; a ceiling (mailboxQuotaKB) must not be exceeded. Refused with the plan and the limit named.", vec![
                customer(),
                input("limit", "string", true, "the limit's name"),
                input("amount", "int", false, "how much (default 1)"),
                input("charge", "bool", false, "record a counted amount (default true)"),
            ]),
            spec("ReleasePlanLimit", w, "Gives back amount of a counted limit.", vec![
                customer(),
                input("limit", "string", true, "the limit's name"),
                input("amount", "int", false, "how much (default 1)"),
            ]),
            spec("AddAsset", w, "Records that the customer holds an asset (PrimaryDomain, SecondaryDomain, VanityDomain, ExchMailboxGUID, …); one held by another customer is refused, a domain of an ancestor is shared.", vec![
                customer(),
                input("assetType", "string", true, "the asset's type"),
                input("value", "string", true, "the asset (a domain name, a GUID)"),
            ]),
            spec("RemoveAsset", w, "Releases an asset the customer holds.", vec![
                customer(),
                input("assetType", "string", true, "the asset's type"),
                input("value", "string", true, "the asset"),
            ]),
            spec("GetCustomer", rd, "The customer's record: type, parent, plan, available plans, usage, assets, events.", vec![customer()]),
        ]
    }

    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        let r = Records::new(&call.state);
        let (execute_data, _) = self.run(&call, &r).await?;
        // The engine restores every key the step wrote: nothing for `undo` to do.
        Ok(Outcome {
            execute_data,
            undo: None,
        })
    }

    async fn undo(&self, _done: Done) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn recover(&self, _call: &Call) -> Result<Option<Element>, ProviderError> {
        // Its only effect is state, which an attempt that did not return keeps nothing of.
        Ok(None)
    }

    async fn preview(&self, call: &Call) -> Result<Preview, ProviderError> {
        let r = Records::new(&call.state);
        let read = matches!(
            call.context.procedure.as_str(),
            "GetPlansByCustomer" | "CheckDependencies" | "GetCustomer"
        );
        preview_of(self.run(call, &r).await.map(|(_, s)| s), read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_and_counted_limits() {
        assert_eq!(domain("value", "Fabrikam.COM.").unwrap(), "fabrikam.com");
        for bad in ["fabrikam", "-a.com", "a..com", "a b.com", "xn--€.com"] {
            let e = domain("value", bad).unwrap_err();
            assert!(e.message().contains("input `value`"), "{bad}: {e}");
        }
        assert_eq!(counted("maxUsers"), "users");
        assert_eq!(counted("mailboxQuotaKB"), "mailboxQuotaKB");
        assert_eq!(
            asset_key("PrimaryDomain", "a.com"),
            asset_key("VanityDomain", "a.com")
        );
    }
}
