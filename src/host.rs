//! The boundary between the filter's logic and Envoy. The logic is written against [`Host`];
//! `WasmHost` implements it with trap-free hostcalls, and tests implement it with a fake.

/// Header maps the filter reads or edits (proxy-wasm `MapType` numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapType {
    RequestHeaders = 0,
    RequestTrailers = 1,
    ResponseHeaders = 2,
    CallResponseHeaders = 6,
}

/// Buffers the filter reads (proxy-wasm `BufferType` numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferType {
    RequestBody = 0,
    ResponseBody = 1,
    CallResponseBody = 4,
    PluginConfiguration = 7,
}

/// A hostcall failed; the raw proxy-wasm status (or `u32::MAX` for a malformed answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostError(pub u32);

pub const CAS_MISMATCH: HostError = HostError(8);

pub type Headers = Vec<(String, Vec<u8>)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

pub trait Host {
    fn now_nanos(&self) -> Result<u64, HostError>;
    /// Milliseconds since the epoch; 0 if the host cannot tell (which makes every deadline
    /// and freshness check fail closed).
    fn now_ms(&self) -> u64 {
        self.now_nanos().map_or(0, |n| n / 1_000_000)
    }
    fn log(&self, level: Level, message: &str);
    /// The lowest level Envoy currently logs for this plugin.
    fn log_level(&self) -> Level;
    fn env(&self, name: &str) -> Option<String>;
    fn set_tick_ms(&self, ms: u32) -> Result<(), HostError>;
    fn random(&self, buf: &mut [u8]) -> Result<(), HostError>;

    fn header_map(&self, map: MapType) -> Result<Headers, HostError>;
    /// One header's value (the first, if repeated); `None` when absent.
    fn header_value(&self, map: MapType, name: &str) -> Result<Option<Vec<u8>>, HostError>;
    fn replace_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), HostError>;
    fn remove_header(&self, map: MapType, name: &str) -> Result<(), HostError>;
    fn buffer(
        &self,
        buffer: BufferType,
        start: usize,
        max: usize,
    ) -> Result<Option<Vec<u8>>, HostError>;
    /// Replaces `size` bytes of a buffer from `start` with `data` (from 0 over its whole
    /// length: the whole body).
    fn set_buffer(
        &self,
        buffer: BufferType,
        start: usize,
        size: usize,
        data: &[u8],
    ) -> Result<(), HostError>;

    fn send_response(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError>;
    fn resume_request(&self) -> Result<(), HostError>;
    fn reset_request(&self) -> Result<(), HostError>;

    /// `(value, cas)`; a missing key is `(None, 0)`.
    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), HostError>;
    /// `cas == 0` writes unconditionally; a stale `cas` fails with [`CAS_MISMATCH`].
    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostError>;

    fn define_counter(&self, name: &str) -> Result<u32, HostError>;
    fn define_gauge(&self, name: &str) -> Result<u32, HostError>;
    fn define_histogram(&self, name: &str) -> Result<u32, HostError>;
    fn increment(&self, metric: u32, by: i64);
    fn record(&self, metric: u32, value: u64);

    /// Starts an HTTP callout; the answer arrives in `on_http_call_response` with the token.
    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, HostError>;

    /// A root context that asked to finish its work before it is deleted (by returning
    /// `false` from `on_done`) has finished it.
    fn done(&self) -> Result<(), HostError>;
}

#[cfg(target_arch = "wasm32")]
pub use wasm::WasmHost;

#[cfg(target_arch = "wasm32")]
mod wasm {
    use super::*;
    use crate::abi;

    /// The real host: Envoy, through hostcalls that report every failure as an error.
    pub struct WasmHost;

    fn e(s: abi::Status) -> HostError {
        HostError(s.0)
    }

    impl Host for WasmHost {
        fn now_nanos(&self) -> Result<u64, HostError> {
            abi::now_nanos().map_err(e)
        }

        fn log(&self, level: Level, message: &str) {
            let level = match level {
                Level::Debug => 1,
                Level::Info => 2,
                Level::Warn => 3,
                Level::Error => 4,
                Level::Critical => 5,
            };
            // Nothing useful can be done if logging itself fails.
            let _ = abi::log(level, message);
        }

        fn log_level(&self) -> Level {
            match abi::log_level() {
                Ok(0 | 1) => Level::Debug,
                Ok(2) => Level::Info,
                Ok(3) => Level::Warn,
                Ok(4) => Level::Error,
                _ => Level::Critical,
            }
        }

        fn env(&self, name: &str) -> Option<String> {
            std::env::var(name).ok()
        }

        fn set_tick_ms(&self, ms: u32) -> Result<(), HostError> {
            abi::set_tick_period_ms(ms).map_err(e)
        }

        fn done(&self) -> Result<(), HostError> {
            abi::done().map_err(e)
        }

        fn random(&self, buf: &mut [u8]) -> Result<(), HostError> {
            getrandom::fill(buf).map_err(|_| HostError(u32::MAX))
        }

        fn header_map(&self, map: MapType) -> Result<Headers, HostError> {
            abi::get_header_map(map as u32).map_err(e)
        }

        fn header_value(&self, map: MapType, name: &str) -> Result<Option<Vec<u8>>, HostError> {
            abi::get_header_value(map as u32, name).map_err(e)
        }

        fn replace_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), HostError> {
            abi::replace_header(map as u32, name, value).map_err(e)
        }

        fn remove_header(&self, map: MapType, name: &str) -> Result<(), HostError> {
            abi::remove_header(map as u32, name).map_err(e)
        }

        fn buffer(
            &self,
            buffer: BufferType,
            start: usize,
            max: usize,
        ) -> Result<Option<Vec<u8>>, HostError> {
            abi::get_buffer(buffer as u32, start, max).map_err(e)
        }

        fn set_buffer(
            &self,
            buffer: BufferType,
            start: usize,
            size: usize,
            data: &[u8],
        ) -> Result<(), HostError> {
            abi::set_buffer(buffer as u32, start, size, data).map_err(e)
        }

        fn send_response(
            &self,
            status: u16,
            headers: &[(&str, &str)],
            body: &[u8],
        ) -> Result<(), HostError> {
            abi::send_local_response(u32::from(status), "bridle", body, headers).map_err(e)
        }

        fn resume_request(&self) -> Result<(), HostError> {
            abi::continue_stream(0).map_err(e)
        }

        fn reset_request(&self) -> Result<(), HostError> {
            abi::close_stream(0).map_err(e)
        }

        fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), HostError> {
            abi::get_shared_data(key).map_err(e)
        }

        fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
            abi::set_shared_data(key, value, cas).map_err(e)
        }

        fn define_counter(&self, name: &str) -> Result<u32, HostError> {
            abi::define_metric(0, name).map_err(e)
        }

        fn define_gauge(&self, name: &str) -> Result<u32, HostError> {
            abi::define_metric(1, name).map_err(e)
        }

        fn define_histogram(&self, name: &str) -> Result<u32, HostError> {
            abi::define_metric(2, name).map_err(e)
        }

        fn increment(&self, metric: u32, by: i64) {
            let _ = abi::increment_metric(metric, by);
        }

        fn record(&self, metric: u32, value: u64) {
            let _ = abi::record_metric(metric, value);
        }

        fn dispatch(
            &self,
            cluster: &str,
            headers: &[(&str, &str)],
            body: &[u8],
            timeout_ms: u64,
        ) -> Result<u32, HostError> {
            // Through the SDK, so that its dispatcher routes the answer to this context. Its
            // wrapper panics only on statuses the ABI does not define for this call.
            proxy_wasm::hostcalls::dispatch_http_call(
                cluster,
                headers.to_vec(),
                Some(body),
                Vec::new(),
                std::time::Duration::from_millis(timeout_ms),
            )
            .map_err(|s| HostError(s as u32))
        }
    }
}
