//! The process's GPU state: the loaded driver, the selected device and its
//! primary context, and the first error the C entry points met.

use crate::driver::{
    DevicePtr, Driver, DriverError, Handle, ATTR_CC_MAJOR, ATTR_CC_MINOR, ERROR_OUT_OF_MEMORY,
    MEM_ATTACH_GLOBAL,
};
use std::collections::HashSet;
use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};

/// The device a run uses, as the driver describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The driver's ordinal (`--device`).
    pub index: i32,
    /// The product name (`NVIDIA H200`).
    pub name: String,
    /// Compute capability, major and minor (`(9, 0)` for sm_90).
    pub capability: (i32, i32),
}

struct Device {
    info: DeviceInfo,
    /// The device's primary context (a `CUcontext`), as an address.
    context: usize,
}

static DRIVER: OnceLock<Result<Driver, DriverError>> = OnceLock::new();
static DEVICE: Mutex<Option<Device>> = Mutex::new(None);
static ERROR: Mutex<Option<RunError>> = Mutex::new(None);
/// Buffers that came from the C heap because managed memory was refused
/// (their run fails with the latched error; this keeps their `free` right).
static HOST_FALLBACK: Mutex<Option<HashSet<usize>>> = Mutex::new(None);

pub(crate) fn driver() -> Result<&'static Driver, DriverError> {
    DRIVER
        .get_or_init(Driver::load)
        .as_ref()
        .map_err(Clone::clone)
}

/// Loads the driver (once per process) and makes device `index` the one that
/// later launches and allocations use, with its primary context current on
/// this thread. Selecting another device after buffers were allocated on the
/// first is refused.
///
/// ```
/// if reformc_gpu_runtime::driver_path().is_none() {
///     assert!(reformc_gpu_runtime::select_device(3).is_err());
/// }
/// ```
pub fn select_device(index: i32) -> Result<DeviceInfo, DriverError> {
    let d = driver()?;
    let mut slot = DEVICE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dev) = slot.as_ref() {
        if dev.info.index == index {
            make_current(d, dev.context)?;
            return Ok(dev.info.clone());
        }
        return Err(DriverError::Call {
            what: format!("selecting device {index}"),
            message: format!(
                "device {} is already in use by this process",
                dev.info.index
            ),
        });
    }
    let mut count = 0;
    // SAFETY: the driver writes one int.
    d.check(
        unsafe { (d.cuDeviceGetCount)(&mut count) },
        "cuDeviceGetCount",
    )?;
    if index < 0 || index >= count {
        return Err(DriverError::NoDevice { index, count });
    }
    let mut dev = 0;
    // SAFETY: `index` is in range; the driver writes one CUdevice.
    d.check(unsafe { (d.cuDeviceGet)(&mut dev, index) }, "cuDeviceGet")?;
    let attr = |a| {
        let mut v = 0;
        // SAFETY: valid attribute and device; the driver writes one int.
        d.check(
            unsafe { (d.cuDeviceGetAttribute)(&mut v, a, dev) },
            "cuDeviceGetAttribute",
        )
        .map(|_| v)
    };
    let capability = (attr(ATTR_CC_MAJOR)?, attr(ATTR_CC_MINOR)?);
    let mut name = [0 as std::ffi::c_char; 128];
    // SAFETY: the driver writes at most `len` bytes including the NUL.
    d.check(
        unsafe { (d.cuDeviceGetName)(name.as_mut_ptr(), 128, dev) },
        "cuDeviceGetName",
    )?;
    // SAFETY: NUL-terminated by the driver within the buffer.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let mut ctx: Handle = std::ptr::null_mut();
    // SAFETY: the driver writes the retained primary context.
    d.check(
        unsafe { (d.cuDevicePrimaryCtxRetain)(&mut ctx, dev) },
        "cuDevicePrimaryCtxRetain",
    )?;
    make_current(d, ctx as usize)?;
    let info = DeviceInfo {
        index,
        name,
        capability,
    };
    *slot = Some(Device {
        info: info.clone(),
        context: ctx as usize,
    });
    Ok(info)
}

fn make_current(d: &Driver, ctx: usize) -> Result<(), DriverError> {
    // SAFETY: `ctx` is a primary context retained by `select_device`.
    d.check(
        unsafe { (d.cuCtxSetCurrent)(ctx as Handle) },
        "cuCtxSetCurrent",
    )
}

/// The selected device (device 0 when none was selected), current on this
/// thread, and the driver.
pub(crate) fn ready() -> Result<&'static Driver, DriverError> {
    let index = DEVICE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map_or(0, |d| d.info.index);
    select_device(index)?;
    driver()
}

/// The device [`select_device`] chose, if any.
pub fn device_info() -> Option<DeviceInfo> {
    let slot = DEVICE.lock().unwrap_or_else(|p| p.into_inner());
    slot.as_ref().map(|d| d.info.clone())
}

/// The first failure of a run on the GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunError {
    /// What failed, in the driver's words where it had some.
    pub message: String,
    /// Whether the device ran out of memory (callers report it as such).
    pub out_of_memory: bool,
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Records `message` as the run's error unless one is already recorded (the
/// first error is the cause; later ones are its consequences).
pub(crate) fn latch(message: String) {
    latch_error(RunError {
        message,
        out_of_memory: false,
    });
}

fn latch_error(error: RunError) {
    let mut e = ERROR.lock().unwrap_or_else(|p| p.into_inner());
    e.get_or_insert(error);
}

/// Whether an error is latched (launches are then skipped).
pub(crate) fn failed() -> bool {
    ERROR.lock().unwrap_or_else(|p| p.into_inner()).is_some()
}

/// The first error since the last call, clearing it.
pub fn take_error() -> Option<RunError> {
    ERROR.lock().unwrap_or_else(|p| p.into_inner()).take()
}

extern "C" {
    fn malloc(size: usize) -> *mut c_void;
    fn free(ptr: *mut c_void);
}

/// `size` bytes of managed memory on the selected device. When the driver
/// refuses (no driver, no device, out of memory), the error is latched and the
/// bytes come from the C heap, so that host code keeps valid pointers while
/// the run unwinds to the caller, which reports the error.
pub fn alloc_managed(size: usize) -> *mut c_void {
    let size = size.max(1);
    let refused = match ready() {
        Ok(d) => {
            let mut p: DevicePtr = 0;
            // SAFETY: the driver writes one device pointer.
            let code = unsafe { (d.cuMemAllocManaged)(&mut p, size, MEM_ATTACH_GLOBAL) };
            if code == 0 {
                return p as *mut c_void;
            }
            RunError {
                message: if code == ERROR_OUT_OF_MEMORY {
                    format!("out of device memory allocating {size} bytes")
                } else {
                    d.check(code, &format!("cuMemAllocManaged({size} bytes)"))
                        .err()
                        .map_or_else(String::new, |e| e.to_string())
                },
                out_of_memory: code == ERROR_OUT_OF_MEMORY,
            }
        }
        Err(e) => RunError {
            message: e.to_string(),
            out_of_memory: false,
        },
    };
    latch_error(refused);
    // SAFETY: plain C allocation; null is handled by the caller's code like
    // any failed allocation.
    let p = unsafe { malloc(size) };
    let mut set = HOST_FALLBACK.lock().unwrap_or_else(|p| p.into_inner());
    set.get_or_insert_with(HashSet::new).insert(p as usize);
    p
}

/// Frees a buffer from [`alloc_managed`].
///
/// # Safety
/// `p` is null or came from [`alloc_managed`], is freed once and not used
/// afterwards.
pub unsafe fn free_managed(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    let host = HOST_FALLBACK
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .is_some_and(|s| s.remove(&(p as usize)));
    if host {
        // SAFETY: `p` came from `malloc` in `alloc_managed`.
        unsafe { free(p) };
        return;
    }
    if let Ok(d) = driver() {
        // SAFETY: `p` came from cuMemAllocManaged and is freed once.
        if let Err(e) = d.check(unsafe { (d.cuMemFree_v2)(p as DevicePtr) }, "cuMemFree") {
            latch(e.to_string());
        }
    }
}
