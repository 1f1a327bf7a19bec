//! Wall-clock milliseconds on every target (`Instant` does not exist on wasm32-unknown-unknown).

/// Milliseconds from an arbitrary origin.
#[cfg(not(target_arch = "wasm32"))]
pub fn now_ms() -> f64 {
    use std::sync::OnceLock;
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    ORIGIN.get_or_init(std::time::Instant::now).elapsed().as_secs_f64() * 1e3
}

/// Milliseconds since the epoch, to a fraction of a millisecond where the page or worker has
/// `performance` (short probes need better than `Date.now()`'s whole milliseconds).
#[cfg(target_arch = "wasm32")]
pub fn now_ms() -> f64 {
    use wasm_bindgen::JsCast;
    match js_sys::Reflect::get(&js_sys::global(), &"performance".into()) {
        Ok(p) if p.is_object() => {
            let p: web_sys::Performance = p.unchecked_into();
            p.time_origin() + p.now()
        }
        _ => js_sys::Date::now(),
    }
}
