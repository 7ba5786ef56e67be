//! An in-memory host for native tests of the filter's logic: it records everything the
//! filter asks for and can be told to fail any kind of hostcall.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::host::{BufferType, Headers, Host, HostError, Level, MapType, CAS_MISMATCH};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl SentResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callout {
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

#[derive(Default)]
pub struct FakeHost {
    pub now_secs: Cell<u64>,
    pub env: RefCell<HashMap<String, String>>,
    pub maps: RefCell<HashMap<u32, Headers>>,
    pub buffers: RefCell<HashMap<u32, Vec<u8>>>,
    pub sent: RefCell<Option<SentResponse>>,
    pub logs: RefCell<Vec<(Level, String)>>,
    pub metric_names: RefCell<Vec<String>>,
    pub metric_values: RefCell<Vec<i64>>,
    /// Every value recorded into a histogram, by metric id.
    pub histograms: RefCell<HashMap<u32, Vec<u64>>>,
    pub shared: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    pub callouts: RefCell<Vec<Callout>>,
    pub resumed: Cell<u32>,
    pub reset: Cell<bool>,
    pub tick_ms: Cell<u32>,
    /// Times the root said it was done.
    pub done: Cell<u32>,
    /// Make header edits fail, as a host would for a stream already gone.
    pub fail_edits: Cell<bool>,
    pub fail_send: Cell<bool>,
    pub fail_dispatch: Cell<bool>,
}

impl FakeHost {
    pub fn set_map(&self, map: MapType, headers: &[(&str, &[u8])]) {
        let h = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect();
        self.maps.borrow_mut().insert(map as u32, h);
    }

    pub fn map(&self, map: MapType) -> Headers {
        self.maps
            .borrow()
            .get(&(map as u32))
            .cloned()
            .unwrap_or_default()
    }

    pub fn header(&self, map: MapType, name: &str) -> Option<String> {
        self.map(map)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
    }

    pub fn set_buffer(&self, buffer: BufferType, bytes: &[u8]) {
        self.buffers
            .borrow_mut()
            .insert(buffer as u32, bytes.to_vec());
    }

    pub fn counter(&self, name: &str) -> i64 {
        let names = self.metric_names.borrow();
        let Some(i) = names.iter().position(|n| n == name) else {
            panic!("no metric {name}; have {names:?}")
        };
        self.metric_values.borrow()[i]
    }

    pub fn sent(&self) -> Option<SentResponse> {
        self.sent.borrow().clone()
    }

    pub fn all_logs(&self) -> String {
        self.logs
            .borrow()
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Host for FakeHost {
    fn now_nanos(&self) -> Result<u64, HostError> {
        Ok(self.now_secs.get() * 1_000_000_000)
    }

    fn log(&self, level: Level, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }

    fn log_level(&self) -> Level {
        Level::Debug
    }

    fn env(&self, name: &str) -> Option<String> {
        self.env.borrow().get(name).cloned()
    }

    fn done(&self) -> Result<(), HostError> {
        self.done.set(self.done.get() + 1);
        Ok(())
    }

    fn set_tick_ms(&self, ms: u32) -> Result<(), HostError> {
        self.tick_ms.set(ms);
        Ok(())
    }

    fn random(&self, buf: &mut [u8]) -> Result<(), HostError> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = i as u8 ^ 0x5a;
        }
        Ok(())
    }

    fn header_map(&self, map: MapType) -> Result<Headers, HostError> {
        Ok(self.map(map))
    }

    fn header_value(&self, map: MapType, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        Ok(self
            .map(map)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v))
    }

    fn replace_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), HostError> {
        if self.fail_edits.get() {
            return Err(HostError(2));
        }
        let mut maps = self.maps.borrow_mut();
        let h = maps.entry(map as u32).or_default();
        h.retain(|(n, _)| n != name);
        h.push((name.to_string(), value.to_vec()));
        Ok(())
    }

    fn remove_header(&self, map: MapType, name: &str) -> Result<(), HostError> {
        if self.fail_edits.get() {
            return Err(HostError(2));
        }
        self.maps
            .borrow_mut()
            .entry(map as u32)
            .or_default()
            .retain(|(n, _)| n != name);
        Ok(())
    }

    fn buffer(
        &self,
        buffer: BufferType,
        start: usize,
        max: usize,
    ) -> Result<Option<Vec<u8>>, HostError> {
        Ok(self
            .buffers
            .borrow()
            .get(&(buffer as u32))
            .map(|b| b.iter().skip(start).take(max).copied().collect()))
    }

    fn set_buffer(
        &self,
        buffer: BufferType,
        start: usize,
        size: usize,
        data: &[u8],
    ) -> Result<(), HostError> {
        if self.fail_edits.get() {
            return Err(HostError(2));
        }
        let mut buffers = self.buffers.borrow_mut();
        let b = buffers.entry(buffer as u32).or_default();
        let end = start.saturating_add(size).min(b.len());
        if start > b.len() {
            return Err(HostError(2));
        }
        b.splice(start..end, data.iter().copied());
        Ok(())
    }

    fn send_response(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError> {
        if self.fail_send.get() {
            return Err(HostError(10));
        }
        *self.sent.borrow_mut() = Some(SentResponse {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: String::from_utf8_lossy(body).into_owned(),
        });
        Ok(())
    }

    fn resume_request(&self) -> Result<(), HostError> {
        self.resumed.set(self.resumed.get() + 1);
        Ok(())
    }

    fn reset_request(&self) -> Result<(), HostError> {
        self.reset.set(true);
        Ok(())
    }

    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), HostError> {
        Ok(self
            .shared
            .borrow()
            .get(key)
            .map_or((None, 0), |(v, cas)| (Some(v.clone()), *cas)))
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
        let mut shared = self.shared.borrow_mut();
        let current = shared.get(key).map_or(0, |(_, c)| *c);
        if cas != 0 && cas != current {
            return Err(CAS_MISMATCH);
        }
        shared.insert(key.to_string(), (value.to_vec(), current + 1));
        Ok(())
    }

    fn define_counter(&self, name: &str) -> Result<u32, HostError> {
        let mut names = self.metric_names.borrow_mut();
        names.push(name.to_string());
        self.metric_values.borrow_mut().push(0);
        Ok(names.len() as u32 - 1)
    }

    fn define_gauge(&self, name: &str) -> Result<u32, HostError> {
        self.define_counter(name)
    }

    fn define_histogram(&self, name: &str) -> Result<u32, HostError> {
        let id = self.define_counter(name)?;
        self.histograms.borrow_mut().insert(id, Vec::new());
        Ok(id)
    }

    fn increment(&self, metric: u32, by: i64) {
        if let Some(v) = self.metric_values.borrow_mut().get_mut(metric as usize) {
            *v += by;
        }
    }

    fn record(&self, metric: u32, value: u64) {
        if let Some(h) = self.histograms.borrow_mut().get_mut(&metric) {
            h.push(value);
        }
        if let Some(v) = self.metric_values.borrow_mut().get_mut(metric as usize) {
            *v = value as i64;
        }
    }

    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, HostError> {
        if self.fail_dispatch.get() {
            return Err(HostError(2));
        }
        let mut calls = self.callouts.borrow_mut();
        calls.push(Callout {
            cluster: cluster.to_string(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
            timeout_ms,
        });
        Ok(calls.len() as u32)
    }
}
