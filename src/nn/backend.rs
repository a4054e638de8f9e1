//! Backend and device selection.
//!
//! All models are generic over `B: Backend`; the script layer fixes one type,
//! [`ScriptBackend`] = `Autodiff<Dispatch>`, and picks the hardware at run time through a
//! [`DispatchDevice`]: `Flex` (pure-Rust CPU, always built) or `Cuda` (only when detlab is
//! built with the `cuda` cargo feature). Inference runs on [`InferenceBackend`] = `Dispatch`
//! (obtained from a trained model with `AutodiffModule::valid()`).

use super::NnError;

pub use burn::DispatchDevice;

/// The one backend the script layer uses: autodiff over the run-time dispatched backend.
pub type ScriptBackend = burn::backend::Autodiff<burn::Dispatch>;

/// The backend of a model after `valid()`: no autodiff graph, same devices.
pub type InferenceBackend = burn::Dispatch;

/// Parse a device name: `"cpu"` (the Flex backend), `"cuda"` (GPU 0) or `"cuda:N"`.
///
/// A CUDA device is only returned when detlab was built with the `cuda` feature and the
/// driver (`libcuda.so.1`), NVRTC and the GPU index were found; otherwise an error says why
/// (creating the device blindly would panic inside burn's device thread).
pub fn device(name: &str) -> Result<DispatchDevice, NnError> {
    let name = name.trim();
    match name.to_ascii_lowercase().as_str() {
        "cpu" | "flex" => Ok(DispatchDevice::Flex(burn::backend::flex::FlexDevice)),
        other if other == "cuda" || other.starts_with("cuda:") => {
            let index = match other.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| NnError::UnknownDevice(name.to_string()))?,
            };
            cuda_device(name, index)
        }
        _ => Err(NnError::UnknownDevice(name.to_string())),
    }
}

/// A short human-readable name of a device, e.g. `"cpu"` or `"cuda:0"`.
pub fn device_name(device: &DispatchDevice) -> String {
    match device {
        DispatchDevice::Flex(_) => "cpu".to_string(),
        #[cfg(feature = "cuda")]
        DispatchDevice::Cuda(d) => format!("cuda:{}", d.index),
        #[allow(unreachable_patterns)]
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Seed the random generator of `device` (weight initialisation, random tensors).
pub fn seed(device: &DispatchDevice, seed: u64) {
    <ScriptBackend as burn::tensor::backend::Backend>::seed(device, seed);
}

#[cfg(feature = "cuda")]
fn cuda_device(name: &str, index: usize) -> Result<DispatchDevice, NnError> {
    let count = probe_cuda_driver().map_err(|reason| NnError::CudaUnavailable {
        device: name.to_string(),
        reason,
    })?;
    if index >= count {
        return Err(NnError::CudaUnavailable {
            device: name.to_string(),
            reason: format!("GPU index {index} requested but the driver reports {count} GPU(s)"),
        });
    }
    probe_nvrtc().map_err(|reason| NnError::CudaUnavailable {
        device: name.to_string(),
        reason,
    })?;
    Ok(DispatchDevice::Cuda(burn::backend::cuda::CudaDevice::new(
        index,
    )))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_name: &str, _index: usize) -> Result<DispatchDevice, NnError> {
    Err(NnError::CudaNotBuilt)
}

/// Load the CUDA driver library, initialise it and return the number of GPUs.
///
/// Errors are sentences for the user (library missing, `cuInit` failed, no GPU).
pub fn probe_cuda_driver() -> Result<usize, String> {
    let names = ["libcuda.so.1", "libcuda.so"];
    let mut last_error = String::new();
    for lib_name in names {
        // SAFETY: loading the NVIDIA driver library runs its initialisers only; the two
        // symbols below have the C signatures documented in cuda.h.
        let library = match unsafe { libloading::Library::new(lib_name) } {
            Ok(l) => l,
            Err(e) => {
                last_error = e.to_string();
                continue;
            }
        };
        unsafe {
            let cu_init: libloading::Symbol<unsafe extern "C" fn(u32) -> i32> = library
                .get(b"cuInit\0")
                .map_err(|e| format!("{lib_name} has no cuInit: {e}"))?;
            let cu_device_get_count: libloading::Symbol<unsafe extern "C" fn(*mut i32) -> i32> =
                library
                    .get(b"cuDeviceGetCount\0")
                    .map_err(|e| format!("{lib_name} has no cuDeviceGetCount: {e}"))?;
            let status = cu_init(0);
            if status != 0 {
                return Err(format!(
                    "cuInit failed with CUDA error code {status} (no usable GPU or driver mismatch)"
                ));
            }
            let mut count: i32 = 0;
            let status = cu_device_get_count(&mut count);
            if status != 0 {
                return Err(format!(
                    "cuDeviceGetCount failed with CUDA error code {status}"
                ));
            }
            if count <= 0 {
                return Err("the CUDA driver reports no GPU".to_string());
            }
            return Ok(count as usize);
        }
    }
    Err(format!(
        "the NVIDIA driver library libcuda.so.1 could not be loaded ({last_error})"
    ))
}

/// Check that an NVRTC library (runtime kernel compiler needed by burn's CUDA backend) loads.
pub fn probe_nvrtc() -> Result<(), String> {
    let names = [
        "libnvrtc.so",
        "libnvrtc.so.13",
        "libnvrtc.so.12",
        "libnvrtc.so.11",
        "libnvrtc.so.11.2",
        "libnvrtc.so.1",
    ];
    for lib_name in names {
        // SAFETY: NVRTC's initialisers have no preconditions; nothing is called here.
        if unsafe { libloading::Library::new(lib_name) }.is_ok() {
            return Ok(());
        }
    }
    Err("no NVRTC library (libnvrtc.so*) found; install the CUDA toolkit or the `nvidia-cuda-nvrtc` \
         wheel and add its lib folder to LD_LIBRARY_PATH"
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_names_give_the_flex_device() {
        for name in ["cpu", "CPU", " flex "] {
            let d = device(name).unwrap();
            assert!(matches!(d, DispatchDevice::Flex(_)), "{name}");
            assert_eq!(device_name(&d), "cpu");
        }
    }

    #[test]
    fn unknown_names_are_rejected_with_the_name() {
        for name in ["gpu", "cuda:x", "cuda:", "metal"] {
            let err = device(name).unwrap_err();
            assert!(
                matches!(err, NnError::UnknownDevice(ref n) if n == name),
                "{name}: {err}"
            );
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_rebuild() {
        let err = device("cuda:0").unwrap_err();
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }

    #[test]
    fn driver_probe_matches_the_presence_of_libcuda() {
        let present = unsafe { libloading::Library::new("libcuda.so.1") }.is_ok();
        match probe_cuda_driver() {
            Ok(count) => assert!(present && count >= 1),
            Err(err) if !present => assert!(err.contains("libcuda.so.1"), "{err}"),
            // A driver without a usable GPU fails in cuInit / cuDeviceGetCount.
            Err(err) => assert!(err.contains("cu"), "{err}"),
        }
    }
}
