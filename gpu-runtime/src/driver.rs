//! The CUDA driver API, loaded at run time: `libcuda.so.1` is opened with
//! `dlopen` and each entry point looked up by name, so that reformc and the
//! executables it writes need no CUDA library to link or start.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};

/// Where the driver library is looked for, in order (`dlopen` searches the
/// loader's path for each). `REFORMC_LIBCUDA` names another file first.
const LIBRARIES: &[&str] = &["libcuda.so.1", "libcuda.so"];

/// Why the CUDA driver could not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverError {
    /// No `libcuda.so` could be opened, or it lacks an entry point.
    NoDriver(String),
    /// The device index is not one of the machine's devices.
    NoDevice {
        /// The index asked for.
        index: i32,
        /// How many devices the driver reports.
        count: i32,
    },
    /// A driver call failed: the call and the driver's message.
    Call {
        /// The driver function and what it was doing.
        what: String,
        /// The driver's error name and description.
        message: String,
    },
}

impl std::fmt::Display for DriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DriverError::NoDriver(why) => write!(
                f,
                "no CUDA driver found ({why}); a GPU run needs an NVIDIA driver (libcuda.so.1), or set REFORMC_LIBCUDA to its path"
            ),
            DriverError::NoDevice { index, count } => write!(
                f,
                "device {index} not present: the CUDA driver reports {count} device(s) (valid --device values: 0..{})",
                (count - 1).max(0)
            ),
            DriverError::Call { what, message } => write!(f, "CUDA driver: {what}: {message}"),
        }
    }
}

impl std::error::Error for DriverError {}

/// `CUresult`: 0 is success.
pub(crate) type CuResult = c_int;
/// `CUdeviceptr`.
pub(crate) type DevicePtr = u64;
/// An opaque driver handle (`CUcontext`, `CUmodule`, `CUfunction`, `CUstream`).
pub(crate) type Handle = *mut c_void;

/// `CU_MEM_ATTACH_GLOBAL`: managed memory any stream and the host may touch.
pub(crate) const MEM_ATTACH_GLOBAL: c_uint = 1;
/// `CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR` and `_MINOR`.
pub(crate) const ATTR_CC_MAJOR: c_int = 75;
pub(crate) const ATTR_CC_MINOR: c_int = 76;
/// `CUDA_ERROR_OUT_OF_MEMORY`.
pub(crate) const ERROR_OUT_OF_MEMORY: CuResult = 2;

/// The driver entry points reformc calls, by their exported (versioned) names.
#[allow(non_snake_case)]
pub(crate) struct Driver {
    pub cuInit: unsafe extern "C" fn(c_uint) -> CuResult,
    pub cuDeviceGetCount: unsafe extern "C" fn(*mut c_int) -> CuResult,
    pub cuDeviceGet: unsafe extern "C" fn(*mut c_int, c_int) -> CuResult,
    pub cuDeviceGetAttribute: unsafe extern "C" fn(*mut c_int, c_int, c_int) -> CuResult,
    pub cuDeviceGetName: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> CuResult,
    pub cuDevicePrimaryCtxRetain: unsafe extern "C" fn(*mut Handle, c_int) -> CuResult,
    pub cuCtxSetCurrent: unsafe extern "C" fn(Handle) -> CuResult,
    pub cuModuleLoadData: unsafe extern "C" fn(*mut Handle, *const c_void) -> CuResult,
    pub cuModuleUnload: unsafe extern "C" fn(Handle) -> CuResult,
    pub cuModuleGetFunction: unsafe extern "C" fn(*mut Handle, Handle, *const c_char) -> CuResult,
    #[allow(clippy::type_complexity)]
    pub cuLaunchKernel: unsafe extern "C" fn(
        Handle,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        Handle,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
    pub cuStreamCreate: unsafe extern "C" fn(*mut Handle, c_uint) -> CuResult,
    pub cuStreamSynchronize: unsafe extern "C" fn(Handle) -> CuResult,
    pub cuStreamDestroy_v2: unsafe extern "C" fn(Handle) -> CuResult,
    pub cuMemAllocManaged: unsafe extern "C" fn(*mut DevicePtr, usize, c_uint) -> CuResult,
    pub cuMemFree_v2: unsafe extern "C" fn(DevicePtr) -> CuResult,
    pub cuGetErrorName: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
    pub cuGetErrorString: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
}

extern "C" {
    fn dlopen(file: *const c_char, mode: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, name: *const c_char) -> *mut c_void;
    fn dlerror() -> *const c_char;
}

/// `RTLD_NOW | RTLD_LOCAL`.
const RTLD_NOW: c_int = 2;

/// The path of the driver library this process would load, if any opens.
pub fn driver_path() -> Option<String> {
    candidates().into_iter().find(|p| open(p).is_ok())
}

fn candidates() -> Vec<String> {
    let mut v: Vec<String> = std::env::var("REFORMC_LIBCUDA").into_iter().collect();
    v.extend(LIBRARIES.iter().map(|s| s.to_string()));
    v
}

fn open(path: &str) -> Result<*mut c_void, String> {
    let c = std::ffi::CString::new(path).map_err(|_| format!("{path}: NUL in path"))?;
    // SAFETY: `c` is a NUL-terminated path; dlopen has no other precondition.
    let h = unsafe { dlopen(c.as_ptr(), RTLD_NOW) };
    if h.is_null() {
        // SAFETY: dlerror returns null or a NUL-terminated message.
        let msg = unsafe { dlerror() };
        let why = if msg.is_null() {
            "not found".to_string()
        } else {
            // SAFETY: checked non-null above; valid until the next dl call.
            unsafe { CStr::from_ptr(msg) }
                .to_string_lossy()
                .into_owned()
        };
        return Err(why);
    }
    Ok(h)
}

impl Driver {
    /// Opens the driver library and resolves every entry point, then calls
    /// `cuInit`.
    pub(crate) fn load() -> Result<Driver, DriverError> {
        let mut last = String::from("libcuda.so.1 not found");
        for path in candidates() {
            match open(&path) {
                Ok(h) => return Self::resolve(h, &path),
                Err(why) => last = why,
            }
        }
        Err(DriverError::NoDriver(last))
    }

    // Each transmute's target is the type of the field it initialises.
    #[allow(clippy::missing_transmute_annotations)]
    fn resolve(h: *mut c_void, path: &str) -> Result<Driver, DriverError> {
        let sym = |name: &str| -> Result<*mut c_void, DriverError> {
            let c = std::ffi::CString::new(name).expect("entry point names have no NUL");
            // SAFETY: `h` is a live handle from dlopen; `c` is NUL-terminated.
            let p = unsafe { dlsym(h, c.as_ptr()) };
            if p.is_null() {
                Err(DriverError::NoDriver(format!("{path} has no `{name}`")))
            } else {
                Ok(p)
            }
        };
        macro_rules! load {
            ($($name:ident),*) => {
                Driver {
                    // SAFETY: each symbol is the driver API function of that
                    // name, whose C signature the field's type spells (CUDA's
                    // cuda.h, API version 12).
                    $($name: unsafe { std::mem::transmute::<*mut c_void, _>(sym(stringify!($name))?) },)*
                }
            };
        }
        let d = load!(
            cuInit,
            cuDeviceGetCount,
            cuDeviceGet,
            cuDeviceGetAttribute,
            cuDeviceGetName,
            cuDevicePrimaryCtxRetain,
            cuCtxSetCurrent,
            cuModuleLoadData,
            cuModuleUnload,
            cuModuleGetFunction,
            cuLaunchKernel,
            cuStreamCreate,
            cuStreamSynchronize,
            cuStreamDestroy_v2,
            cuMemAllocManaged,
            cuMemFree_v2,
            cuGetErrorName,
            cuGetErrorString
        );
        // SAFETY: cuInit takes flags, which must be 0.
        d.check(unsafe { (d.cuInit)(0) }, "cuInit")?;
        Ok(d)
    }

    /// `Ok` for success, otherwise the driver's name and text for `code`.
    pub(crate) fn check(&self, code: CuResult, what: &str) -> Result<(), DriverError> {
        if code == 0 {
            return Ok(());
        }
        let text = |f: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult| {
            let mut p: *const c_char = std::ptr::null();
            // SAFETY: the driver writes a pointer to a static string or leaves
            // it null for an unknown code.
            let ok = unsafe { f(code, &mut p) } == 0 && !p.is_null();
            // SAFETY: non-null pointers from the driver are static C strings.
            ok.then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        };
        let name = text(self.cuGetErrorName).unwrap_or_else(|| format!("error {code}"));
        let desc = text(self.cuGetErrorString).unwrap_or_default();
        Err(DriverError::Call {
            what: what.to_string(),
            message: format!("{name}: {desc}"),
        })
    }
}
