//! The calls into the C shim: the only unsafe code of the workspace, each block with the
//! reason it is sound.

use crate::{Limits, XsltError};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, Once};

extern "C" {
    fn pxslt_init() -> c_int;
    fn pxslt_compile(
        text: *const c_char,
        len: c_int,
        url: *const c_char,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn pxslt_free_stylesheet(style: *mut c_void);
    #[allow(clippy::too_many_arguments)]
    fn pxslt_apply(
        style: *mut c_void,
        src: *const c_char,
        len: c_int,
        max_out: usize,
        max_depth: c_int,
        max_vars: c_int,
        out: *mut *mut c_char,
        out_len: *mut usize,
        err: *mut *mut c_char,
    ) -> c_int;
    fn pxslt_free(s: *mut c_char);
}

/// libxslt's error handler is one global of the process: every call that may report holds
/// this lock (the calls are short; see the crate's documentation).
static LOCK: Mutex<()> = Mutex::new(());
static INIT: Once = Once::new();
static mut INIT_FAILED: bool = false;

fn enter() -> Result<MutexGuard<'static, ()>, XsltError> {
    let guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    init(guard)
}

/// Like [`enter`], but `None` when another thread holds the lock (instead of waiting).
fn try_enter() -> Option<Result<MutexGuard<'static, ()>, XsltError>> {
    match LOCK.try_lock() {
        Ok(guard) => Some(init(guard)),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(init(p.into_inner())),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

fn init(guard: MutexGuard<'static, ()>) -> Result<MutexGuard<'static, ()>, XsltError> {
    INIT.call_once(|| {
        // SAFETY: pxslt_init takes no arguments; it runs once (Once) and under LOCK, before
        // any other call into libxml2/libxslt of this crate.
        let rc = unsafe { pxslt_init() };
        if rc != 0 {
            // SAFETY: written only here, inside call_once, and read after call_once
            // returned (Once orders the write before every later read).
            unsafe { INIT_FAILED = true };
        }
    });
    // SAFETY: see above; no write happens after call_once returned.
    if unsafe { INIT_FAILED } {
        return Err(XsltError {
            message: "libxslt could not be initialized (security preferences)".into(),
            line: None,
        });
    }
    Ok(guard)
}

/// Takes a string the shim malloc'd (NULL = none) and frees it.
fn take_string(p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the shim hands out NUL-terminated strings it allocated with malloc; we read it
    // once and release it with the shim's free, after which the pointer is not used again.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: as above, p came from the shim's malloc and is freed exactly once.
    unsafe { pxslt_free(p) };
    Some(s)
}

fn c_len(s: &str) -> Result<c_int, XsltError> {
    c_int::try_from(s.len()).map_err(|_| XsltError {
        message: format!("{} bytes is too large for libxml2", s.len()),
        line: None,
    })
}

/// A compiled XSLT 1.0 stylesheet. Shared between threads: libxslt only reads a compiled
/// stylesheet while transforming (each transformation has its own context), and this
/// crate serializes the calls anyway.
#[derive(Debug)]
pub struct Stylesheet {
    ptr: NonNull<c_void>,
}

// SAFETY: the stylesheet is immutable after compilation and every use goes through LOCK.
unsafe impl Send for Stylesheet {}
// SAFETY: as for Send: shared use only reads it, under LOCK.
unsafe impl Sync for Stylesheet {}

impl Stylesheet {
    /// Compiles a stylesheet from its text. `url` names it in messages (and is the base of
    /// relative URIs, which are refused anyway). Errors carry libxml2's or libxslt's line.
    pub fn compile(text: &str, url: &str) -> Result<Stylesheet, XsltError> {
        let len = c_len(text)?;
        let url = CString::new(url.replace('\0', "")).unwrap_or_default();
        let _guard = enter()?;
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: text is valid for len bytes (libxml2 reads exactly len, NULs included),
        // url is NUL-terminated, err points to a local; all outlive the call.
        let ptr = unsafe { pxslt_compile(text.as_ptr().cast(), len, url.as_ptr(), &mut err) };
        let messages = take_string(err);
        match NonNull::new(ptr) {
            Some(ptr) => Ok(Stylesheet { ptr }),
            None => Err(XsltError::from_messages(
                messages.as_deref().unwrap_or("the stylesheet was refused"),
            )),
        }
    }

    /// Runs the stylesheet on a document and returns the result's top-level nodes as XML
    /// text (no declaration; empty when the result is empty).
    pub fn apply(&self, source: &str, limits: &Limits) -> Result<String, XsltError> {
        let guard = enter()?;
        self.apply_locked(source, limits, guard)
    }

    /// [`Stylesheet::apply`] if no other transformation is running, `None` otherwise: an
    /// async caller runs a small transformation inline only when it will not wait for the
    /// lock (and hands it to a blocking thread otherwise).
    pub fn try_apply(&self, source: &str, limits: &Limits) -> Option<Result<String, XsltError>> {
        match try_enter()? {
            Ok(guard) => Some(self.apply_locked(source, limits, guard)),
            Err(e) => Some(Err(e)),
        }
    }

    fn apply_locked(
        &self,
        source: &str,
        limits: &Limits,
        _guard: MutexGuard<'static, ()>,
    ) -> Result<String, XsltError> {
        let len = c_len(source)?;
        let mut out: *mut c_char = std::ptr::null_mut();
        let mut out_len: usize = 0;
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: self.ptr is a live stylesheet (freed only in Drop); source is valid for
        // len bytes; the out-pointers point to locals that outlive the call.
        let rc = unsafe {
            pxslt_apply(
                self.ptr.as_ptr(),
                source.as_ptr().cast(),
                len,
                limits.max_output,
                c_int::from(limits.max_depth),
                c_int::try_from(limits.max_vars).unwrap_or(c_int::MAX),
                &mut out,
                &mut out_len,
                &mut err,
            )
        };
        let result = take_string(out);
        let messages = take_string(err);
        if rc != 0 {
            return Err(XsltError::from_messages(
                messages.as_deref().unwrap_or("the transformation failed"),
            ));
        }
        Ok(result.unwrap_or_default())
    }
}

impl Drop for Stylesheet {
    fn drop(&mut self) {
        let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: the pointer came from pxslt_compile and is freed once, here.
        unsafe { pxslt_free_stylesheet(self.ptr.as_ptr()) };
    }
}
