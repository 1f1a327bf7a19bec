//! The GPU device: one code path for native wgpu (Vulkan/Metal/DX12) and the browser's WebGPU.
//! Requests the adapter's real limits and only the optional features it has (and the caller
//! allows), so the engine runs on any adapter, including ones without `shader-f16`.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Which optional adapter features the engine may use; all off still works everywhere.
#[derive(Clone, Copy, Debug)]
pub struct GpuOptions {
    pub allow_subgroups: bool,
    pub allow_f16: bool,
    pub allow_timestamps: bool,
    /// Run the kernel shapes meant for real GPUs even on a CPU adapter (tests cover them on
    /// lavapipe this way).
    pub gpu_shapes: bool,
    /// How the KV cache stores K and V.
    pub kv: KvType,
}

/// The KV cache's element type (shaders/kv_f16.wgsl, kv_f32.wgsl).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// f16, two packed in a u32 (no `shader-f16` needed): half the bytes a token takes and
    /// reads, so twice the context in the same memory. The default, as in llama.cpp.
    #[default]
    F16,
    /// f32: exact against the f32 reference, twice the bytes.
    F32,
}

impl KvType {
    /// Bytes of one element.
    pub fn bytes(self) -> u64 {
        match self {
            KvType::F16 => 2,
            KvType::F32 => 4,
        }
    }
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions { allow_subgroups: true, allow_f16: true, allow_timestamps: true, gpu_shapes: false, kv: KvType::F16 }
    }
}

impl GpuOptions {
    /// No optional feature, as on the most limited adapters (and SwiftShader, which lacks f16).
    pub fn portable() -> Self {
        GpuOptions { allow_subgroups: false, allow_f16: false, allow_timestamps: false, gpu_shapes: false, kv: KvType::F16 }
    }
}

/// What the engine reads off the adapter it got.
#[derive(Clone, Debug)]
pub struct AdapterInfo {
    pub name: String,
    pub backend: String,
    pub driver: String,
    /// A CPU implementation (lavapipe, SwiftShader): kernels pick CPU-friendly shapes.
    pub cpu_like: bool,
    pub subgroups: bool,
    /// Largest lane count per row the matmul may sum with subgroup shuffles; 0: use workgroup
    /// memory instead (no subgroups, or lanes not laid out as the kernel assumes).
    pub subgroup_rows: u32,
    pub f16: bool,
    pub timestamps: bool,
    pub max_buffer_size: u64,
    pub max_binding_size: u64,
    pub max_storage_buffers_per_stage: u32,
    pub max_workgroup_storage: u32,
    pub max_invocations: u32,
}

pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: AdapterInfo,
    /// The KV cache's element type models on this context use ([`GpuOptions::kv`]).
    pub kv: KvType,
    pub faults: Faults,
}

/// What the device reported on its own: its loss (a driver reset, the browser reclaiming the
/// GPU, `destroy`) and errors no error scope caught (out of memory). wgpu's default handler
/// panics on the latter; here they fail the step that meets them instead.
#[derive(Clone, Default)]
pub struct Faults {
    lost: Arc<Mutex<Option<String>>>,
    error: Arc<Mutex<Option<String>>>,
}

impl Faults {
    fn watch(device: &wgpu::Device) -> Faults {
        let faults = Faults::default();
        let lost = faults.lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            let why = match reason {
                wgpu::DeviceLostReason::Destroyed => "it was destroyed",
                wgpu::DeviceLostReason::Unknown => "the driver or the browser reset it",
            };
            let message = if message.is_empty() { String::new() } else { format!(": {message}") };
            *lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{why}{message}"));
        });
        let error = faults.error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| e.to_string());
        }));
        faults
    }

    /// `DeviceLost` once the device is gone (for good), else the first uncaught error since the
    /// last check.
    pub fn check(&self) -> Result<()> {
        if let Some(why) = self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(Error::DeviceLost(why));
        }
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(Error::Gpu(e)),
            None => Ok(()),
        }
    }
}

impl GpuContext {
    /// Opens the best adapter. Fails with a clear message when there is no WebGPU.
    pub async fn new(opts: GpuOptions) -> Result<GpuContext> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::PRIMARY | wgpu::Backends::BROWSER_WEBGPU;
        let instance = wgpu::Instance::new(desc);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions { power_preference: wgpu::PowerPreference::HighPerformance, force_fallback_adapter: false, compatible_surface: None })
            .await
            .map_err(|e| Error::NoGpu(e.to_string()))?;
        let available = adapter.features();
        let mut features = wgpu::Features::empty();
        let mut want = |f: wgpu::Features, allowed: bool| {
            if allowed && available.contains(f) {
                features |= f;
            }
        };
        want(wgpu::Features::SUBGROUP, opts.allow_subgroups);
        want(wgpu::Features::SHADER_F16, opts.allow_f16);
        want(wgpu::Features::TIMESTAMP_QUERY, opts.allow_timestamps);
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("ferrolm"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::NoGpu(format!("the adapter refused to create a device: {e}")))?;
        let mut a = adapter.get_info();
        if a.name.is_empty() {
            a.name = browser_adapter_name().await;
        }
        let lower = format!("{} {}", a.name, a.driver).to_lowercase();
        let cpu_like = !opts.gpu_shapes && (a.device_type == wgpu::DeviceType::Cpu || ["swiftshader", "llvmpipe", "lavapipe"].iter().any(|n| lower.contains(n)));
        let subgroups = features.contains(wgpu::Features::SUBGROUP);
        let subgroup_rows = if subgroups { probe_subgroups(&device, &queue, a.subgroup_min_size).await? } else { 0 };
        let info = AdapterInfo {
            cpu_like,
            subgroup_rows,
            name: a.name,
            backend: format!("{:?}", a.backend),
            driver: format!("{} {}", a.driver, a.driver_info).trim().to_string(),
            subgroups,
            f16: features.contains(wgpu::Features::SHADER_F16),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            max_buffer_size: limits.max_buffer_size,
            max_binding_size: limits.max_storage_buffer_binding_size as u64,
            max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_invocations: limits.max_compute_invocations_per_workgroup,
        };
        let faults = Faults::watch(&device);
        Ok(GpuContext { device, queue, info, kv: opts.kv, faults })
    }

    /// Destroys the device, as a driver reset would: every step after this fails with
    /// `DeviceLost`. For fault tests (and for releasing GPU memory at once).
    pub fn destroy(&self) {
        // Recorded now: the browser reports the loss later, after a failed map at the earliest.
        self.faults.lost.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| "it was destroyed".into());
        self.device.destroy();
    }

    /// Copies `size` bytes of `src` (from `offset`) back to the CPU.
    pub async fn read_buffer(&self, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        read_buffer(&self.device, &self.queue, src, offset, size).await
    }

    /// Maps the first `size` bytes of a MAP_READ buffer whose copy was already submitted and
    /// returns them.
    pub async fn map_read(&self, staging: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        map_read(&self.device, staging, size, None).await
    }
}

/// The same code runs natively (poll blocks until the copy is done) and in the browser (the
/// event loop resolves the map).
async fn read_buffer(device: &wgpu::Device, queue: &wgpu::Queue, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
    let staging = device.create_buffer(&wgpu::BufferDescriptor { label: Some("readback"), size, usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false });
    let mut enc = device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(src, offset, &staging, 0, size);
    let index = queue.submit([enc.finish()]);
    map_read(device, &staging, size, Some(index)).await
}

/// Maps `staging` and copies out its first `size` bytes. Natively the poll waits for
/// `submission` (the one that fills the buffer; None: everything submitted), not for later
/// steps queued behind it.
pub(super) async fn map_read(device: &wgpu::Device, staging: &wgpu::Buffer, size: u64, submission: Option<wgpu::SubmissionIndex>) -> Result<Vec<u8>> {
    let (tx, rx) = futures_channel::oneshot::channel();
    staging.map_async(wgpu::MapMode::Read, ..size, move |r| {
        let _ = tx.send(r);
    });
    // Native backends need a poll to make progress; on the web this is a no-op.
    let _ = device.poll(wgpu::PollType::Wait { submission_index: submission, timeout: None });
    rx.await.map_err(|_| Error::Gpu("the GPU device was lost during a readback".into()))?.map_err(|e| Error::Gpu(format!("mapping a readback buffer failed: {e}")))?;
    let bytes = staging.get_mapped_range(..size).to_vec();
    staging.unmap();
    Ok(bytes)
}

/// Runs shaders/subgroup_probe.wgsl and returns the subgroup size when every lane id equals
/// `local_invocation_index % size` (what the shuffle reduction assumes), else 0. Natively the
/// size is capped at the adapter's minimum, since drivers may pick another size per pipeline.
async fn probe_subgroups(device: &wgpu::Device, queue: &wgpu::Queue, min_size: u32) -> Result<u32> {
    let source = format!("{}{}", super::kernels::SUBGROUP_ENABLE, include_str!("../../../shaders/subgroup_probe.wgsl"));
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some("subgroup probe"), source: wgpu::ShaderSource::Wgsl(source.into()) });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("subgroup probe"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let out = device.create_buffer(&wgpu::BufferDescriptor { label: Some("subgroup probe"), size: 512, usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC, mapped_at_creation: false });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry { binding: 0, resource: out.as_entire_binding() }],
    });
    let mut enc = device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    queue.submit([enc.finish()]);
    let bytes = read_buffer(device, queue, &out, 0, 512).await?;
    let words: &[u32] = bytemuck::cast_slice(&bytes);
    let size = words[1];
    let linear = size.is_power_of_two() && (0..64).all(|i| words[2 * i + 1] == size && words[2 * i] == i as u32 % size);
    let cap = if cfg!(target_arch = "wasm32") { size } else { size.min(min_size) };
    Ok(if linear { cap } else { 0 })
}

/// wgpu leaves a browser adapter's name empty; read `GPUAdapter.info` through JS instead
/// ("google swiftshader", "nvidia ampere", ...). Empty when unavailable.
#[cfg(target_arch = "wasm32")]
async fn browser_adapter_name() -> String {
    use wasm_bindgen::JsCast;
    let get = |v: &wasm_bindgen::JsValue, k: &str| js_sys::Reflect::get(v, &k.into()).unwrap_or(wasm_bindgen::JsValue::UNDEFINED);
    let gpu = get(&get(&js_sys::global(), "navigator"), "gpu");
    let Ok(request) = get(&gpu, "requestAdapter").dyn_into::<js_sys::Function>() else { return String::new() };
    let Ok(promise) = request.call0(&gpu).and_then(|p| p.dyn_into::<js_sys::Promise>()) else { return String::new() };
    let Ok(adapter) = wasm_bindgen_futures::JsFuture::from(promise).await else { return String::new() };
    let info = get(&adapter, "info");
    ["vendor", "architecture", "description"].iter().filter_map(|k| get(&info, k).as_string()).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(not(target_arch = "wasm32"))]
async fn browser_adapter_name() -> String {
    String::new()
}
