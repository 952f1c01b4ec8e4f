//! The HRESULT-style error codes Provisio reports, in one place.
//!
//! MPS reports every error as a 32-bit HRESULT (`0x8007xxxx` wraps a Win32 error number,
//! `0x8000xxxx` is a generic COM code). Provisio keeps the codes a hosting team's tooling
//! already matches on. Engine and providers name codes from here, never as inline literals.

/// E_NOTIMPL: the operation is not implemented (a provider without preview, two-phase, …).
pub const E_NOTIMPL: u32 = 0x8000_4001;
/// E_FAIL: the catch-all failure.
pub(crate) const E_FAIL: u32 = 0x8000_4005;
/// E_ABORT: the operation was cancelled (a cancelled transaction's first step not run).
pub const E_ABORT: u32 = 0x8000_4004;
/// E_INVALIDARG: bad input.
pub const E_INVALIDARG: u32 = 0x8007_0057;
/// ERROR_PATH_NOT_FOUND.
pub const E_PATH_NOT_FOUND: u32 = 0x8007_0003;
/// ERROR_ACCESS_DENIED.
pub const E_ACCESS_DENIED: u32 = 0x8007_0005;
/// ERROR_NOT_SUPPORTED (an operation the file system or platform does not offer).
pub const E_NOT_SUPPORTED: u32 = 0x8007_0032;
/// ERROR_DIR_NOT_EMPTY.
pub const E_DIR_NOT_EMPTY: u32 = 0x8007_0091;
/// ERROR_ALREADY_EXISTS.
pub const E_ALREADY_EXISTS: u32 = 0x8007_00B7;
/// ERROR_DISK_QUOTA_EXCEEDED.
pub const E_DISK_QUOTA_EXCEEDED: u32 = 0x8007_050F;
/// DNS_ERROR_ZONE_DOES_NOT_EXIST.
pub const E_ZONE_NOT_FOUND: u32 = 0x8007_2581;
/// DNS_ERROR_ZONE_ALREADY_EXISTS.
pub const E_ZONE_EXISTS: u32 = 0x8007_2589;
/// DNS_ERROR_RECORD_DOES_NOT_EXIST.
pub const E_RECORD_NOT_FOUND: u32 = 0x8007_25E5;
/// DNS_ERROR_RECORD_ALREADY_EXISTS.
pub const E_RECORD_EXISTS: u32 = 0x8007_25EF;
/// DNS_ERROR_CNAME_COLLISION.
pub const E_CNAME_COLLISION: u32 = 0x8007_25F1;
/// ERROR_NOT_FOUND: a named record (a mail store, a plan, a customer) does not exist.
pub const E_NOT_FOUND: u32 = 0x8007_0490;
/// E_BLOCKMODEL_NO_RANKED_RESOURCES_FOUND (Resource Manager): no resource has room.
pub const E_NO_RANKED_RESOURCES: u32 = 0x8004_1101;
/// A limit of the customer's plan refuses the request (Managed Plans).
pub const E_PLAN_LIMIT: u32 = 0x8004_1102;
/// An asset (a domain) is held by another customer (Managed Plans).
pub const E_ASSET_NOT_AVAILABLE: u32 = 0x8004_1103;
/// A service needs another one the plan or customer lacks (Managed Plans).
pub const E_DEPENDENCY_MISSING: u32 = 0x8004_1104;
/// COR_E_TIMEOUT-like code MPS reports when a script exceeds one of its limits.
pub(crate) const E_SCRIPT_LIMIT: u32 = 0x8013_1501;
/// The code the test providers use for an asked-for failure (an MPS provider-specific code).
#[cfg(any(test, feature = "test-util"))]
pub(crate) const E_TEST_FAILURE: u32 = 0x8210_1391;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_failure_hresults() {
        let all = [
            E_NOTIMPL,
            E_ABORT,
            E_FAIL,
            E_INVALIDARG,
            E_PATH_NOT_FOUND,
            E_ACCESS_DENIED,
            E_NOT_SUPPORTED,
            E_DIR_NOT_EMPTY,
            E_ALREADY_EXISTS,
            E_DISK_QUOTA_EXCEEDED,
            E_ZONE_NOT_FOUND,
            E_ZONE_EXISTS,
            E_RECORD_NOT_FOUND,
            E_RECORD_EXISTS,
            E_CNAME_COLLISION,
            E_SCRIPT_LIMIT,
            E_TEST_FAILURE,
            E_NOT_FOUND,
            E_NO_RANKED_RESOURCES,
            E_PLAN_LIMIT,
            E_ASSET_NOT_AVAILABLE,
            E_DEPENDENCY_MISSING,
        ];
        let mut seen = std::collections::HashSet::new();
        for code in all {
            assert!(code & 0x8000_0000 != 0, "{code:#x} lacks the failure bit");
            assert!(seen.insert(code), "{code:#x} listed twice");
        }
    }
}
