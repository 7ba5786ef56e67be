//! Bridle's Envoy filter: a thin proxy-wasm adapter over `bridle-core`.
//!
//! The request path itself is `bridle_core::exchange`; this crate only does its I/O. The SDK
//! provides the exports and the context dispatcher; everything the filter asks of Envoy goes
//! through [`host::Host`], whose real implementation cannot trap. `stream` feeds a request's
//! headers, bodies and the ledger's answers to the exchange; `ticker` keeps the revocation
//! set fresh and flushes reports; both reach the ledger through `ledger_link`. All of it is
//! generic over the host, so it runs natively against a fake.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]
// Natively the crate is built only for its tests; outside them, the modules that only the
// proxy-wasm glue calls look unused.
#![cfg_attr(not(any(target_arch = "wasm32", test)), allow(dead_code))]

/// Returns `Continue` from the request path at `step` in an ablation build (see
/// `ablation`); expands to nothing otherwise. Defined before the modules that use it.
macro_rules! ablate {
    ($step:expr) => {
        #[cfg(feature = "ablation")]
        if $crate::ablation::stop_at($step) {
            return proxy_wasm::types::Action::Continue;
        }
    };
}

#[cfg(target_arch = "wasm32")]
mod abi;
#[cfg(feature = "ablation")]
pub mod ablation;
#[cfg(any(target_arch = "wasm32", test))]
mod header_map;
pub mod host;
mod ids;
mod ledger_link;
mod loop_guard;
pub mod metrics;
pub mod plugin;
mod reports;
mod revocations;
pub mod stream;
mod ticker;

#[cfg(test)]
mod fake_host;
#[cfg(test)]
mod llm_tests;
#[cfg(test)]
mod tests;

#[cfg(target_arch = "wasm32")]
mod glue {
    use std::rc::Rc;

    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType};

    use crate::host::{BufferType, Host, Level, WasmHost};
    use crate::plugin::Plugin;
    use crate::stream::Stream;
    use crate::ticker::Ticker;

    proxy_wasm::main! {{
        // Not the SDK's logger or panic hook: both unwrap the log hostcall's result.
        std::panic::set_hook(Box::new(|info| {
            WasmHost.log(Level::Critical, &format!("filter panicked: {info}"));
        }));
        proxy_wasm::set_root_context(|_| Box::new(Root { plugin: None, ticker: Ticker::default() }));
    }}

    struct Root {
        plugin: Option<Rc<Plugin>>,
        ticker: Ticker,
    }

    impl Context for Root {
        /// Envoy lets go of this plugin (a configuration push replaced it, and its streams
        /// have ended): settle its leases and send its reports before it is deleted.
        fn on_done(&mut self) -> bool {
            match &self.plugin {
                Some(plugin) => self.ticker.on_done(&WasmHost, plugin),
                None => true,
            }
        }

        fn on_http_call_response(
            &mut self,
            token_id: u32,
            _num_headers: usize,
            body_size: usize,
            _num_trailers: usize,
        ) {
            if let Some(plugin) = &self.plugin {
                self.ticker
                    .on_call_response(&WasmHost, plugin, token_id, body_size);
            }
        }
    }

    impl RootContext for Root {
        fn on_configure(&mut self, size: usize) -> bool {
            let host = WasmHost;
            let bytes = match host.buffer(BufferType::PluginConfiguration, 0, size) {
                Ok(b) => b,
                Err(e) => {
                    host.log(
                        Level::Critical,
                        &format!("could not read the plugin configuration (status {})", e.0),
                    );
                    return false;
                }
            };
            match Plugin::configure(&host, bytes.as_deref()) {
                Ok(plugin) => {
                    host.log(
                        Level::Info,
                        &format!("configured for {}", plugin.blueprint.vendor()),
                    );
                    self.plugin = Some(Rc::new(plugin));
                    true
                }
                Err(why) => {
                    host.log(Level::Critical, &format!("configuration refused: {why}"));
                    false
                }
            }
        }

        fn on_tick(&mut self) {
            if let Some(plugin) = &self.plugin {
                self.ticker.on_tick(&WasmHost, plugin);
            }
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            #[cfg(feature = "ablation")]
            if crate::ablation::module_only() {
                return Some(Box::new(crate::ablation::EmptyContext));
            }
            #[cfg(feature = "ablation")]
            if crate::ablation::hostcalls_only() {
                return Some(Box::new(HostcallsStream));
            }
            Some(Box::new(StreamContext(Stream::new(self.plugin.clone()))))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct StreamContext(Stream);

    /// The ablation build's hostcalls-only request (see `ablation`).
    #[cfg(feature = "ablation")]
    struct HostcallsStream;

    #[cfg(feature = "ablation")]
    impl Context for HostcallsStream {}

    #[cfg(feature = "ablation")]
    impl HttpContext for HostcallsStream {
        fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            crate::ablation::Hostcalls::on_request_headers(&WasmHost);
            Action::Continue
        }

        fn on_log(&mut self) {
            crate::ablation::Hostcalls::on_log(&WasmHost);
        }
    }

    impl Context for StreamContext {
        fn on_http_call_response(
            &mut self,
            token_id: u32,
            _num_headers: usize,
            body_size: usize,
            _num_trailers: usize,
        ) {
            self.0.on_call_response(&WasmHost, token_id, body_size);
        }
    }

    impl HttpContext for StreamContext {
        fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
            self.0.on_request_headers(&WasmHost, end_of_stream)
        }

        fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
            self.0.on_request_body(&WasmHost, body_size, end_of_stream)
        }

        fn on_http_request_trailers(&mut self, num_trailers: usize) -> Action {
            self.0.on_request_trailers(&WasmHost, num_trailers)
        }

        fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
            self.0.on_response_headers(&WasmHost, end_of_stream)
        }

        fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
            self.0.on_response_body(&WasmHost, body_size, end_of_stream)
        }

        fn on_log(&mut self) {
            self.0.on_log(&WasmHost);
        }
    }
}
