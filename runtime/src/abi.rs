//! One declaration per C function of the runtime.
//!
//! Every `extern "C"` function that generated code calls (the kernels of
//! [`crate::ffi`], the buffer cache of [`crate::alloc`], the profiler of
//! [`crate::profile`], and the executable runtime's model helpers) is written
//! once, inside a [`c_abi!`](crate::c_abi) block. From that one definition the
//! macro generates
//! - the `#[no_mangle] extern "C"` function itself,
//! - its entry in the module's [`Section`] table: name, documentation, and
//!   the C type of every parameter and of the result, taken from the Rust
//!   types of the definition (through [`CValue`]), and its address.
//!
//! The LLVM backend declares its externs from these tables, the JIT binds
//! their symbols from them, and the signature part of `runtime/ABI.md` is
//! printed from them ([`c_prototype`](Kernel::c_prototype)), so no signature
//! is ever written twice.

use std::ffi::c_void;

/// The C type of a parameter or result, as generated code sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CType {
    /// No value (`void`): a result only.
    Void,
    /// `int32_t`.
    I32,
    /// `int64_t`.
    I64,
    /// `float`.
    F32,
    /// `double`.
    F64,
    /// Any data or function pointer.
    Ptr,
}

/// A Rust type that may be a parameter or result of a C ABI function: its
/// [`CType`] and its C spelling.
///
/// ```
/// use reformc_runtime::abi::{CType, CValue};
/// assert_eq!(<*const f32 as CValue>::TY, CType::Ptr);
/// assert_eq!(<*const f32 as CValue>::c_name(), "const float*");
/// assert_eq!(<*const *const std::ffi::c_char as CValue>::c_name(), "const char* const*");
/// ```
pub trait CValue {
    /// How the value is passed.
    const TY: CType;
    /// The C spelling (`int64_t`, `const float*`).
    fn c_name() -> String;
}

/// A Rust type that a C ABI pointer may point to: its C spelling.
pub trait CPointee {
    /// True for pointer types (so that `*const *const T` prints as `T const*`).
    const IS_PTR: bool = false;
    /// The C spelling of the pointee.
    fn c_name() -> String;
}

macro_rules! scalar {
    ($($t:ty => $ty:ident, $c:literal;)*) => {$(
        impl CValue for $t {
            const TY: CType = CType::$ty;
            fn c_name() -> String {
                $c.into()
            }
        }
        impl CPointee for $t {
            fn c_name() -> String {
                $c.into()
            }
        }
    )*};
}

scalar! {
    i32 => I32, "int32_t";
    i64 => I64, "int64_t";
    f32 => F32, "float";
    f64 => F64, "double";
}

impl CValue for () {
    const TY: CType = CType::Void;
    fn c_name() -> String {
        "void".into()
    }
}

macro_rules! pointee {
    ($($t:ty => $c:literal;)*) => {$(
        impl CPointee for $t {
            fn c_name() -> String {
                $c.into()
            }
        }
    )*};
}

// `c_char` is `i8` on the targets the backend emits for (x86-64).
pointee! {
    c_void => "void";
    i8 => "char";
    u8 => "uint8_t";
}

impl<T: CPointee> CValue for *const T {
    const TY: CType = CType::Ptr;
    fn c_name() -> String {
        <Self as CPointee>::c_name() + "*"
    }
}

impl<T: CPointee> CValue for *mut T {
    const TY: CType = CType::Ptr;
    fn c_name() -> String {
        <Self as CPointee>::c_name() + "*"
    }
}

impl<T: CPointee> CPointee for *const T {
    const IS_PTR: bool = true;
    fn c_name() -> String {
        // The pointer's own constness: `const T*`, or `T* const` style for a pointer pointee.
        match T::IS_PTR {
            true => format!("{} const", pointer_base::<T>()),
            false => format!("const {}", T::c_name()),
        }
    }
}

impl<T: CPointee> CPointee for *mut T {
    const IS_PTR: bool = true;
    fn c_name() -> String {
        pointer_base::<T>()
    }
}

/// `T*` spelled for use as a pointee.
fn pointer_base<T: CPointee>() -> String {
    match T::IS_PTR {
        true => T::c_name() + "*",
        false => T::c_name(),
    }
}

/// The type of one parameter or result: how it is passed and its C spelling.
#[derive(Clone, Copy, Debug)]
pub struct CSlot {
    /// How the value is passed.
    pub ty: CType,
    c_name: fn() -> String,
}

impl CSlot {
    /// The slot of Rust type `T`.
    pub const fn of<T: CValue>() -> CSlot {
        CSlot {
            ty: T::TY,
            c_name: T::c_name,
        }
    }

    /// The C spelling (`const float*`).
    pub fn c_name(&self) -> String {
        (self.c_name)()
    }
}

/// One C ABI function, as its [`c_abi!`](crate::c_abi) definition declares it.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// The symbol name.
    pub name: &'static str,
    /// The Rust documentation of the definition.
    pub doc: &'static str,
    /// The result type.
    pub ret: CSlot,
    /// Parameter names and types, in order.
    pub params: &'static [(&'static str, CSlot)],
    /// The function's address (a closure: addresses are not constants).
    pub addr: fn() -> usize,
}

impl Kernel {
    /// The parameter types, in order.
    pub fn param_types(&self) -> Vec<CType> {
        self.params.iter().map(|(_, s)| s.ty).collect()
    }

    /// The address of the function in this process (for a JIT's symbol table).
    pub fn address(&self) -> usize {
        (self.addr)()
    }

    /// The C prototype, wrapped before column `width` with continuation lines
    /// aligned after the opening parenthesis.
    ///
    /// ```
    /// let k = reformc_runtime::ffi::SECTION.kernel("rc_set_threads").unwrap();
    /// assert_eq!(k.c_prototype(100), "int32_t rc_set_threads(int64_t n);");
    /// ```
    pub fn c_prototype(&self, width: usize) -> String {
        let head = format!("{} {}(", self.ret.c_name(), self.name);
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(n, s)| format!("{} {n}", s.c_name()))
            .collect();
        if params.is_empty() {
            return format!("{head}void);");
        }
        let indent = " ".repeat(head.len());
        let mut out = head;
        let mut line_len = out.len();
        for (i, p) in params.iter().enumerate() {
            let piece = match i + 1 == params.len() {
                true => format!("{p});"),
                false => format!("{p},"),
            };
            let sep = if i == 0 { "" } else { " " };
            if i > 0 && line_len + sep.len() + piece.len() > width {
                out.push('\n');
                out.push_str(&indent);
                line_len = indent.len();
            } else {
                out.push_str(sep);
                line_len += sep.len();
            }
            out.push_str(&piece);
            line_len += piece.len();
        }
        out
    }

    /// The documentation up to its first `#` heading (the `# Safety` part is
    /// Rust's concern), as lines.
    pub fn summary(&self) -> Vec<&'static str> {
        let mut lines: Vec<&'static str> = self
            .doc
            .lines()
            .map(|l| l.strip_prefix(' ').unwrap_or(l))
            .take_while(|l| !l.starts_with('#'))
            .collect();
        while lines.last().is_some_and(|l| l.trim().is_empty()) {
            lines.pop();
        }
        lines
    }
}

/// The C ABI functions of one module, declared by one [`c_abi!`](crate::c_abi) block.
#[derive(Clone, Copy, Debug)]
pub struct Section {
    /// What the functions are for, and where they are defined.
    pub title: &'static str,
    /// The functions, in definition order.
    pub kernels: &'static [Kernel],
}

impl Section {
    /// The function named `name`, if this section declares it.
    pub fn kernel(&self, name: &str) -> Option<&'static Kernel> {
        self.kernels.iter().find(|k| k.name == name)
    }

    /// The section as a C code block for `runtime/ABI.md`: each function's
    /// documentation as `//` comments, then its prototype.
    pub fn c_block(&self) -> String {
        let mut out = format!("// {}\n", self.title);
        for k in self.kernels {
            out.push('\n');
            for l in k.summary() {
                out.push_str(format!("// {l}").trim_end());
                out.push('\n');
            }
            out.push_str(&k.c_prototype(100));
            out.push('\n');
        }
        out
    }
}

/// The sections of this crate: kernels, buffer cache, profiler.
pub const SECTIONS: &[Section] = &[
    crate::ffi::SECTION,
    crate::alloc::SECTION,
    crate::profile::SECTION,
];

/// Declares C ABI functions once: generates each `#[no_mangle] extern "C"`
/// function and a `pub const SECTION: Section` describing all of them (see
/// the [module documentation](crate::abi)).
///
/// Each function is written as `unsafe fn` (generating `pub unsafe extern
/// "C" fn`) or `safe fn` (generating `pub extern "C" fn`), with only doc
/// comments as attributes. Parameter and result types must implement
/// [`CValue`](crate::abi::CValue).
///
/// ```
/// mod demo {
///     reformc_runtime::c_abi! {
///         section = "Demo";
///         /// Twice `n`.
///         safe fn demo_twice(n: i64) -> i64 {
///             2 * n
///         }
///     }
/// }
/// assert_eq!(demo::demo_twice(21), 42);
/// let k = &demo::SECTION.kernels[0];
/// assert_eq!(k.c_prototype(80), "int64_t demo_twice(int64_t n);");
/// assert_eq!(k.address(), demo::demo_twice as *const () as usize);
/// ```
#[macro_export]
macro_rules! c_abi {
    (
        section = $title:literal;
        $(
            $(#[doc = $doc:literal])*
            $kind:ident fn $name:ident ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
        )*
    ) => {
        $(
            $crate::__c_abi_fn! {
                $kind [$(#[doc = $doc])*] $name ($($arg: $ty),*) ($($ret)?) $body
            }
        )*

        /// The C ABI functions of this module (see `reformc_runtime::abi`).
        pub const SECTION: $crate::abi::Section = $crate::abi::Section {
            title: $title,
            kernels: &[$(
                $crate::abi::Kernel {
                    name: stringify!($name),
                    doc: concat!($($doc, "\n"),*),
                    ret: $crate::__c_abi_ret!($($ret)?),
                    params: &[$((stringify!($arg), $crate::abi::CSlot::of::<$ty>())),*],
                    addr: || $name as *const () as usize,
                }
            ),*],
        };
    };
}

/// One function of [`c_abi!`]: `unsafe fn` or `safe fn`.
#[doc(hidden)]
#[macro_export]
macro_rules! __c_abi_fn {
    (unsafe [$($doc:tt)*] $name:ident ($($arg:ident : $ty:ty),*) ($($ret:ty)?) $body:block) => {
        $($doc)*
        #[no_mangle]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) $(-> $ret)? $body
    };
    (safe [$($doc:tt)*] $name:ident ($($arg:ident : $ty:ty),*) ($($ret:ty)?) $body:block) => {
        $($doc)*
        #[no_mangle]
        #[allow(clippy::too_many_arguments)]
        pub extern "C" fn $name($($arg: $ty),*) $(-> $ret)? $body
    };
}

/// The result slot of [`c_abi!`]: `void` when no type is written.
#[doc(hidden)]
#[macro_export]
macro_rules! __c_abi_ret {
    () => {
        $crate::abi::CSlot::of::<()>()
    };
    ($ret:ty) => {
        $crate::abi::CSlot::of::<$ret>()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_spellings() {
        assert_eq!(<*mut *mut c_void as CValue>::c_name(), "void**");
        assert_eq!(<*mut *const c_void as CValue>::c_name(), "const void**");
        assert_eq!(<*const i64 as CValue>::c_name(), "const int64_t*");
        assert_eq!(<*mut u8 as CValue>::c_name(), "uint8_t*");
        assert_eq!(<() as CValue>::TY, CType::Void);
    }

    #[test]
    fn prototypes_wrap_and_align() {
        let k = crate::ffi::SECTION.kernel("rc_matmul_f32").unwrap();
        let p = k.c_prototype(60);
        let lines: Vec<&str> = p.lines().collect();
        assert!(
            lines.len() > 1 && lines.iter().all(|l| l.len() <= 60),
            "{p}"
        );
        let open = lines[0].find('(').unwrap() + 1;
        assert!(lines[1..]
            .iter()
            .all(|l| l[..open].trim().is_empty() && !l[open..].starts_with(' ')));
        assert_eq!(
            p.split_whitespace().collect::<Vec<_>>().join(" "),
            k.c_prototype(1000)
        );
    }

    #[test]
    fn every_section_names_distinct_functions() {
        let mut names: Vec<&str> = SECTIONS
            .iter()
            .flat_map(|s| s.kernels)
            .map(|k| k.name)
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        assert!(n >= 20, "{n}");
    }
}
