//! Finding and loading the ONNX Runtime shared library.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::config::cache_dir;

/// The ONNX Runtime version the project is built and tested against.
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::onnx::{find_library, ORT_VERSION};
///
/// // Where scripts/setup.sh puts the library this build expects.
/// let file = format!("libonnxruntime.so.{ORT_VERSION}");
/// let cached = shm_runtime::config::cache_dir().join("onnxruntime").join(file);
/// if cached.is_file() && std::env::var_os("ORT_DYLIB_PATH").is_none() {
///     assert_eq!(find_library()?, cached);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const ORT_VERSION: &str = "1.32.0";

/// Finds the ONNX Runtime shared library: `ORT_DYLIB_PATH`, then
/// `<cache>/onnxruntime/libonnxruntime.so.1.32.0`, then the `capi` folder of an `onnxruntime`
/// Python package.
///
/// # Errors
///
/// A message saying where it looked and how to get the library.
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::onnx::find_library;
///
/// match find_library() {
///     Ok(path) => println!("ONNX Runtime: {}", path.display()),
///     // A sentence saying where it looked, and how to get the library.
///     Err(why) => assert!(why.contains("ORT_DYLIB_PATH")),
/// }
/// ```
pub fn find_library() -> Result<PathBuf, String> {
    let mut looked = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(format!(
            "ORT_DYLIB_PATH is set to {}, which is not a file",
            p.display()
        ));
    }
    looked.push("ORT_DYLIB_PATH (unset)".to_owned());
    let cached = cache_dir()
        .join("onnxruntime")
        .join(format!("libonnxruntime.so.{ORT_VERSION}"));
    if cached.is_file() {
        return Ok(cached);
    }
    looked.push(cached.display().to_string());
    for py in ["python3", "python"] {
        let out = std::process::Command::new(py)
            .args([
                "-c",
                "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
            ])
            .stderr(std::process::Stdio::null())
            .output();
        if let Some(out) = out.ok().filter(|o| o.status.success()) {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("capi");
            if let Ok(entries) = std::fs::read_dir(&dir) {
                let mut libs: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                    })
                    .collect();
                libs.sort();
                if let Some(lib) = libs.pop() {
                    return Ok(lib);
                }
            }
            looked.push(format!("{} (python onnxruntime package)", dir.display()));
            break;
        }
    }
    looked.push("an onnxruntime Python package (none installed)".to_owned());
    Err(format!(
        "ONNX Runtime {ORT_VERSION} not found (looked at: {}). Run scripts/setup.sh to fetch it \
         into the cache, or point ORT_DYLIB_PATH at libonnxruntime.so",
        looked.join("; ")
    ))
}

/// The process's ONNX Runtime environment, created (and the library loaded) on first use.
///
/// # Errors
///
/// When the library cannot be found or loaded.
///
/// # Examples
///
/// ```no_run
/// use shm_runtime::backend::onnx::environment;
///
/// // The library is loaded on first use; every ONNX model of the process shares it.
/// let env = environment()?;
/// assert!(std::ptr::eq(env, environment()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn environment() -> Result<&'static ort::environment::Environment, String> {
    static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let lib = find_library()?;
        ort::init_from(&lib)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", lib.display()))?
            .with_name("shm-runtime")
            .build()
            .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}
