//! The embedded backend's schema: the object classes it knows, the attributes each allows,
//! which attributes are single-valued, DN-valued or integers. An attribute or class not
//! listed here is refused with a clear error instead of being stored.
//!
//! The classes follow Active Directory's: a `user` is `top, person, organizationalPerson,
//! user`; `inetOrgPerson` adds itself to that chain; a `contact` is `top, person,
//! organizationalPerson, contact`. Attributes are spelled as AD spells them, and names
//! are matched case-insensitively.

/// One object class the embedded backend can create.
#[derive(Debug)]
pub struct ClassDef {
    /// The class name as given in `Create Object` (`user`).
    pub name: &'static str,
    /// The `objectClass` values an object of this class holds, top first.
    pub chain: &'static [&'static str],
    /// The attributes its RDN may use (`cn`, `ou`, `dc`).
    pub naming: &'static [&'static str],
    /// Attributes allowed besides [`COMMON`].
    pub may: &'static [&'static [&'static str]],
    /// The short form of `objectCategory`.
    pub category: &'static str,
}

/// Attributes every class allows.
pub const COMMON: &[&str] = &[
    "objectClass",
    "description",
    "displayName",
    "adminDescription",
    "name",
];

const DOMAIN: &[&str] = &["dc", "managedBy", "uPNSuffixes", "gPLink"];
const OU: &[&str] = &[
    "ou",
    "street",
    "streetAddress",
    "l",
    "st",
    "postalCode",
    "c",
    "co",
    "telephoneNumber",
    "facsimileTelephoneNumber",
    "businessCategory",
    "managedBy",
    "uPNSuffixes",
    "gPLink",
    "seeAlso",
    "msExchQueryBaseDN",
];
const CONTAINER: &[&str] = &["cn"];
const PERSON: &[&str] = &[
    "cn",
    "sn",
    "givenName",
    "initials",
    "middleName",
    "telephoneNumber",
    "otherTelephone",
    "mobile",
    "otherMobile",
    "homePhone",
    "pager",
    "facsimileTelephoneNumber",
    "ipPhone",
    "seeAlso",
    "title",
    "department",
    "company",
    "manager",
    "streetAddress",
    "street",
    "postOfficeBox",
    "l",
    "st",
    "postalCode",
    "c",
    "co",
    "physicalDeliveryOfficeName",
    "mail",
    "proxyAddresses",
    "mailNickname",
    "targetAddress",
    "legacyExchangeDN",
    "showInAddressBook",
    "msExchHideFromAddressLists",
    "info",
    "wWWHomePage",
    "url",
    "employeeID",
    "extensionAttribute1",
    "extensionAttribute2",
    "extensionAttribute3",
    "extensionAttribute4",
    "extensionAttribute5",
    "extensionAttribute6",
    "extensionAttribute7",
    "extensionAttribute8",
    "extensionAttribute9",
    "extensionAttribute10",
    "extensionAttribute11",
    "extensionAttribute12",
    "extensionAttribute13",
    "extensionAttribute14",
    "extensionAttribute15",
];
const USER: &[&str] = &[
    "sAMAccountName",
    "userPrincipalName",
    "userAccountControl",
    "accountExpires",
    "pwdLastSet",
    "homeDirectory",
    "homeDrive",
    "profilePath",
    "scriptPath",
    "userWorkstations",
    "employeeType",
    "msExchQueryBaseDN",
];
const INET_ORG_PERSON: &[&str] = &[
    "uid",
    "employeeNumber",
    "carLicense",
    "departmentNumber",
    "labeledURI",
    "preferredLanguage",
    "roomNumber",
    "secretary",
    "o",
    "ou",
];
const GROUP: &[&str] = &[
    "cn",
    "sAMAccountName",
    "groupType",
    "member",
    "mail",
    "managedBy",
    "info",
    "proxyAddresses",
    "mailNickname",
    "legacyExchangeDN",
    "showInAddressBook",
    "msExchHideFromAddressLists",
];

/// The classes, most specific first (the first whose chain ends in a value of an entry's
/// `objectClass` is its structural class).
pub const CLASSES: &[ClassDef] = &[
    ClassDef {
        name: "inetOrgPerson",
        chain: &[
            "top",
            "person",
            "organizationalPerson",
            "user",
            "inetOrgPerson",
        ],
        naming: &["cn", "uid"],
        may: &[PERSON, USER, INET_ORG_PERSON],
        category: "person",
    },
    ClassDef {
        name: "user",
        chain: &["top", "person", "organizationalPerson", "user"],
        naming: &["cn"],
        may: &[PERSON, USER],
        category: "person",
    },
    ClassDef {
        name: "contact",
        chain: &["top", "person", "organizationalPerson", "contact"],
        naming: &["cn"],
        may: &[PERSON],
        category: "person",
    },
    ClassDef {
        name: "person",
        chain: &["top", "person"],
        naming: &["cn"],
        may: &[PERSON],
        category: "person",
    },
    ClassDef {
        name: "group",
        chain: &["top", "group"],
        naming: &["cn"],
        may: &[GROUP],
        category: "group",
    },
    ClassDef {
        name: "organizationalUnit",
        chain: &["top", "organizationalUnit"],
        naming: &["ou"],
        may: &[OU],
        category: "organizationalUnit",
    },
    ClassDef {
        name: "container",
        chain: &["top", "container"],
        naming: &["cn"],
        may: &[CONTAINER],
        category: "container",
    },
    ClassDef {
        name: "domain",
        chain: &["top", "domain"],
        naming: &["dc"],
        may: &[DOMAIN],
        category: "domain",
    },
    ClassDef {
        name: "dcObject",
        chain: &["top", "dcObject"],
        naming: &["dc"],
        may: &[DOMAIN],
        category: "domain",
    },
];

/// Attributes that hold more than one value; all others hold one.
pub const MULTI_VALUED: &[&str] = &[
    "objectClass",
    "member",
    "proxyAddresses",
    "otherTelephone",
    "otherMobile",
    "uPNSuffixes",
    "seeAlso",
    "url",
    "description",
    "businessCategory",
    "carLicense",
    "departmentNumber",
    "labeledURI",
    "roomNumber",
    "secretary",
    "o",
    "ou",
    "userWorkstations",
];

/// Attributes whose values are DNs.
pub const DN_VALUED: &[&str] = &[
    "member",
    "manager",
    "managedBy",
    "seeAlso",
    "secretary",
    "msExchQueryBaseDN",
];

/// Attributes whose values are integers.
pub const INTEGER: &[&str] = &[
    "userAccountControl",
    "groupType",
    "accountExpires",
    "pwdLastSet",
    "showInAddressBook",
];

/// Attributes the directory computes: they are returned, never written.
pub const COMPUTED: &[&str] = &["memberOf", "distinguishedName", "objectCategory"];

/// Attributes only the password procedures may touch.
pub const PASSWORD_ATTRS: &[&str] = &["unicodePwd", "userPassword", "clearTextPassword"];

/// `userAccountControl` of a normal account.
pub const UAC_NORMAL: i64 = 512;
/// The `ACCOUNTDISABLE` bit of `userAccountControl`.
pub const UAC_DISABLED_BIT: i64 = 2;

fn contains(list: &[&str], name: &str) -> bool {
    list.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// A class by name (case-insensitive).
pub fn class(name: &str) -> Option<&'static ClassDef> {
    CLASSES.iter().find(|c| c.name.eq_ignore_ascii_case(name))
}

/// The structural class of an entry, from its `objectClass` values.
pub fn structural(object_classes: &[String]) -> Option<&'static ClassDef> {
    CLASSES.iter().find(|c| {
        object_classes
            .iter()
            .any(|v| v.eq_ignore_ascii_case(c.chain.last().copied().unwrap_or("")))
    })
}

/// The attribute's schema spelling if any class knows it (`samaccountname` →
/// `sAMAccountName`).
pub fn canonical(name: &str) -> Option<&'static str> {
    let lists = std::iter::once(COMMON).chain(CLASSES.iter().flat_map(|c| c.may.iter().copied()));
    for list in lists {
        if let Some(a) = list.iter().find(|a| a.eq_ignore_ascii_case(name)) {
            return Some(a);
        }
    }
    None
}

/// Whether `class` allows `attr`.
pub fn allows(class: &ClassDef, attr: &str) -> bool {
    contains(COMMON, attr) || class.may.iter().any(|l| contains(l, attr))
}

/// Whether `attr` holds one value at most.
pub fn single_valued(attr: &str) -> bool {
    !contains(MULTI_VALUED, attr)
}

/// Whether `attr` holds DNs.
pub fn dn_valued(attr: &str) -> bool {
    contains(DN_VALUED, attr)
}

/// Whether `attr` holds integers.
pub fn integer(attr: &str) -> bool {
    contains(INTEGER, attr)
}

/// Whether `attr` is computed by the directory.
pub fn computed(attr: &str) -> bool {
    contains(COMPUTED, attr)
}

/// Whether `attr` is a password attribute.
pub fn password(attr: &str) -> bool {
    contains(PASSWORD_ATTRS, attr)
}

/// The names of the known classes, for messages.
pub fn class_names() -> String {
    CLASSES
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(class("USER").unwrap().name, "user");
        assert_eq!(canonical("samaccountname"), Some("sAMAccountName"));
        assert!(allows(class("user").unwrap(), "givenname"));
        assert!(!allows(class("organizationalUnit").unwrap(), "givenName"));
        assert!(allows(class("group").unwrap(), "member"));
        assert!(single_valued("mail"));
        assert!(!single_valued("member"));
        assert_eq!(
            structural(&[
                "top".into(),
                "person".into(),
                "organizationalPerson".into(),
                "user".into()
            ])
            .unwrap()
            .name,
            "user"
        );
        assert!(class("computer").is_none());
    }
}
