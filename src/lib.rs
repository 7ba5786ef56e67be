//! Bridle's Envoy filter: a thin proxy-wasm adapter over `bridle-core`.
//!
//! The SDK provides the exports and the context dispatcher; everything the filter asks of
//! Envoy goes through [`host::Host`], whose real implementation cannot trap. The logic in
//! `plugin` and `stream` is generic over the host, so it runs natively against a fake.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

#[cfg(target_arch = "wasm32")]
mod abi;
#[cfg(any(target_arch = "wasm32", test))]
mod header_map;
pub mod host;
pub mod metrics;
pub mod plugin;
pub mod stream;

#[cfg(test)]
mod fake_host;
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

    proxy_wasm::main! {{
        // Not the SDK's logger or panic hook: both unwrap the log hostcall's result.
        std::panic::set_hook(Box::new(|info| {
            WasmHost.log(Level::Critical, &format!("filter panicked: {info}"));
        }));
        proxy_wasm::set_root_context(|_| Box::new(Root { plugin: None }));
    }}

    struct Root {
        plugin: Option<Rc<Plugin>>,
    }

    impl Context for Root {}

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
                        &format!("configured for {}", plugin.gate.vendor()),
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

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(StreamContext(Stream::new(self.plugin.clone()))))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct StreamContext(Stream);

    impl Context for StreamContext {}

    impl HttpContext for StreamContext {
        fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            self.0.on_request_headers(&WasmHost)
        }
    }
}
