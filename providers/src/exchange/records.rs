//! The mail provider's records in provider state (the truth; the files are rendered from
//! them) and their keys. Names in keys are escaped (`%`, `/` as `%25`, `%2F`); organization
//! and user ids are normalised DNs, addresses and aliases lower-case.
//!
//! | key | value |
//! | --- | --- |
//! | `domain/<domain>` | [`DomainRec`]: type, owning organization, organizations sharing it |
//! | `mbx/<org>/<user>` | [`MailboxRec`]: addresses, alias, quota, store, out-of-office, resource type, what was charged for it |
//! | `user/<user>` | the organization id of the user's mailbox |
//! | `addr/<address>` | who holds the address (`mbx/…`, `grp/…` key) |
//! | `alias/<alias>` | who holds the alias |
//! | `grp/<org>/<name>` | [`GroupRec`]: a distribution group and its members |
//! | `contact/<org>/<name>` | [`ContactRec`]: a mail contact (an external address) |

use crate::bookkeeping::esc;
use serde::{Deserialize, Serialize};

/// An accepted domain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct DomainRec {
    pub(crate) name: String,
    /// Authoritative | InternalRelay | ExternalRelay.
    pub(crate) kind: String,
    /// Owning organization id and its DN as given.
    pub(crate) owner: String,
    pub(crate) owner_dn: String,
    /// Organizations under the owner (a reseller) that use it too: ids.
    #[serde(default)]
    pub(crate) sharers: Vec<String>,
    /// Addresses in the domain held by each organization (id → count).
    #[serde(default)]
    pub(crate) counts: std::collections::BTreeMap<String, u64>,
}

/// Out-of-office.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct OofRec {
    pub(crate) subject: String,
    pub(crate) message: String,
    pub(crate) days: u32,
}

/// A mailbox of a directory user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct MailboxRec {
    /// The user's DN as read from the directory.
    pub(crate) user: String,
    pub(crate) org: String,
    pub(crate) org_dn: String,
    pub(crate) alias: String,
    pub(crate) display: String,
    /// The first is the primary SMTP address.
    pub(crate) addresses: Vec<String>,
    pub(crate) quota_kb: u64,
    /// The mail store (server, database); empty when none was named.
    pub(crate) server: String,
    pub(crate) store: String,
    #[serde(default)]
    pub(crate) plan: Option<String>,
    #[serde(default)]
    pub(crate) oof: Option<OofRec>,
    /// A resource (room or equipment) mailbox: its type and capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) resource: Option<ResourceRec>,
    /// What the caller charged for this mailbox elsewhere (Hosted Email 2007: the resource
    /// manager's allocation, the plan's count), given back exactly when it is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) allocation: Option<AllocationRec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) plan_charge: Option<ChargeRec>,
}

/// A resource mailbox's type and capacity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ResourceRec {
    /// Room | Equipment.
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) capacity: Option<u64>,
}

/// The resource manager's names of the mailbox's allocation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct AllocationRec {
    pub(crate) organization: String,
    pub(crate) mailbox: String,
}

/// A Managed Plans count the mailbox took.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ChargeRec {
    pub(crate) customer: String,
    pub(crate) limit: String,
    pub(crate) amount: u64,
}

impl MailboxRec {
    pub(crate) fn primary(&self) -> &str {
        &self.addresses[0]
    }
}

/// A distribution group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct GroupRec {
    pub(crate) org: String,
    pub(crate) org_dn: String,
    pub(crate) name: String,
    pub(crate) alias: String,
    pub(crate) display: String,
    pub(crate) address: String,
    /// Members' primary addresses (mailboxes or groups of the same organization).
    #[serde(default)]
    pub(crate) members: Vec<String>,
}

/// A mail contact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ContactRec {
    pub(crate) org: String,
    pub(crate) org_dn: String,
    pub(crate) name: String,
    pub(crate) alias: String,
    pub(crate) display: String,
    pub(crate) external: String,
}

pub(crate) fn domain_key(d: &str) -> String {
    format!("domain/{}", esc(d))
}

pub(crate) fn mailbox_key(org: &str, user: &str) -> String {
    format!("mbx/{}/{}", esc(org), esc(user))
}

pub(crate) fn user_key(user: &str) -> String {
    format!("user/{}", esc(user))
}

pub(crate) fn address_key(a: &str) -> String {
    format!("addr/{}", esc(a))
}

pub(crate) fn alias_key(a: &str) -> String {
    format!("alias/{}", esc(&a.to_ascii_lowercase()))
}

pub(crate) fn group_key(org: &str, name: &str) -> String {
    format!("grp/{}/{}", esc(org), esc(&name.to_lowercase()))
}

pub(crate) fn contact_key(org: &str, name: &str) -> String {
    format!("contact/{}/{}", esc(org), esc(&name.to_lowercase()))
}

/// The organization id in a `mbx/`, `grp/` or `contact/` key.
pub(crate) fn org_of_key(key: &str) -> Option<&str> {
    let rest = key.split_once('/')?.1;
    Some(rest.split_once('/')?.0)
}
