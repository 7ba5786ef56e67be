//! The proxy-wasm ABI imports the filter calls, declared here rather than taken from the
//! SDK's `hostcalls` module: those wrappers `panic!` on any status they do not expect and
//! `unwrap()` UTF-8 conversions of header values, and a panic traps the VM. Here every
//! status, known or not, comes back as an `Err`, and bytes stay bytes.
//!
//! The one exception is `proxy_http_call`, which must go through the SDK so that its
//! dispatcher routes the response back to the calling context; see `host.rs`.

// The SDK declares the same imports with its own enum types; the ABI is u32 either way,
// and a u32 return value cannot be an invalid enum discriminant.
#![allow(clashing_extern_declarations)]

use std::ptr::{null, null_mut};

/// A non-OK proxy-wasm status, as the raw number the host returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u32);

pub const NOT_FOUND: Status = Status(1);

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_done() -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status_code: u32,
        details_data: *const u8,
        details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_close_stream(stream_type: u32) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
}

fn status(code: u32) -> Result<(), Status> {
    if code == 0 {
        Ok(())
    } else {
        Err(Status(code))
    }
}

/// Takes ownership of a buffer the host allocated through the SDK's
/// `proxy_on_memory_allocate`, which hands out boxed slices of exactly `size` bytes.
///
/// # Safety
/// `data` must be null or a pointer the host returned with `size` from that allocator.
unsafe fn take(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        // SAFETY: the allocator produced a Box<[u8]> of length `size` at `data`.
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }
}

pub fn log(level: u32, message: &str) -> Result<(), Status> {
    // SAFETY: pointer and length describe `message`, which outlives the call.
    status(unsafe { proxy_log(level, message.as_ptr(), message.len()) })
}

pub fn log_level() -> Result<u32, Status> {
    let mut level = 0u32;
    // SAFETY: `level` is a valid out-pointer for the duration of the call.
    status(unsafe { proxy_get_log_level(&mut level) })?;
    Ok(level)
}

pub fn now_nanos() -> Result<u64, Status> {
    let mut t = 0u64;
    // SAFETY: `t` is a valid out-pointer for the duration of the call.
    status(unsafe { proxy_get_current_time_nanoseconds(&mut t) })?;
    Ok(t)
}

pub fn set_tick_period_ms(ms: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    status(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

pub fn done() -> Result<(), Status> {
    // SAFETY: no pointers.
    status(unsafe { proxy_done() })
}

pub fn get_buffer(
    buffer_type: u32,
    start: usize,
    max_size: usize,
) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: out-pointers are valid; the host fills them from our allocator.
    match status(unsafe {
        proxy_get_buffer_bytes(buffer_type, start, max_size, &mut data, &mut size)
    }) {
        Ok(()) => Ok(unsafe { take(data, size) }),
        Err(NOT_FOUND) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces `size` bytes from `start` with `data`; Envoy drains the whole body and puts `data`
/// in its place when `start` is 0 and `size` its length.
pub fn set_buffer(buffer_type: u32, start: usize, size: usize, data: &[u8]) -> Result<(), Status> {
    // SAFETY: pointer and length describe a live slice.
    status(unsafe { proxy_set_buffer_bytes(buffer_type, start, size, data.as_ptr(), data.len()) })
}

/// All pairs of a header map, values as raw bytes.
pub fn get_header_map(map_type: u32) -> Result<Vec<(String, Vec<u8>)>, Status> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: out-pointers are valid; the host fills them from our allocator.
    status(unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) })?;
    match unsafe { take(data, size) } {
        None => Ok(Vec::new()),
        Some(bytes) => crate::header_map::decode(&bytes).ok_or(Status(u32::MAX)),
    }
}

/// One header's value; a missing header is `None`.
pub fn get_header_value(map_type: u32, name: &str) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: pointers describe a live slice and valid out-pointers the host fills from our
    // allocator.
    match status(unsafe {
        proxy_get_header_map_value(map_type, name.as_ptr(), name.len(), &mut data, &mut size)
    }) {
        Ok(()) => Ok(Some(unsafe { take(data, size) }.unwrap_or_default())),
        Err(NOT_FOUND) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn replace_header(map_type: u32, name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers and lengths describe live slices.
    status(unsafe {
        proxy_replace_header_map_value(
            map_type,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_header(map_type: u32, name: &str) -> Result<(), Status> {
    // SAFETY: pointer and length describe a live slice.
    status(unsafe { proxy_remove_header_map_value(map_type, name.as_ptr(), name.len()) })
}

pub fn send_local_response(
    code: u32,
    details: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Result<(), Status> {
    let serialized = crate::header_map::encode(headers);
    // SAFETY: pointers and lengths describe live slices; -1 means "not gRPC".
    status(unsafe {
        proxy_send_local_response(
            code,
            details.as_ptr(),
            details.len(),
            if body.is_empty() {
                null()
            } else {
                body.as_ptr()
            },
            body.len(),
            serialized.as_ptr(),
            serialized.len(),
            -1,
        )
    })
}

pub fn continue_stream(stream_type: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    status(unsafe { proxy_continue_stream(stream_type) })
}

pub fn close_stream(stream_type: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    status(unsafe { proxy_close_stream(stream_type) })
}

/// `(value, cas)`; a missing key is `(None, 0)`.
pub fn get_shared_data(key: &str) -> Result<(Option<Vec<u8>>, u32), Status> {
    let (mut data, mut size, mut cas) = (null_mut(), 0usize, 0u32);
    // SAFETY: out-pointers are valid; the host fills them from our allocator.
    match status(unsafe {
        proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
    }) {
        Ok(()) => Ok((unsafe { take(data, size) }, cas)),
        Err(NOT_FOUND) => Ok((None, 0)),
        Err(e) => Err(e),
    }
}

/// `cas == 0` writes unconditionally; otherwise a stale `cas` fails with `CAS_MISMATCH`.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    // SAFETY: pointers and lengths describe live slices.
    status(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

pub fn define_metric(metric_type: u32, name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    // SAFETY: pointer and length describe a live slice; `id` is a valid out-pointer.
    status(unsafe { proxy_define_metric(metric_type, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, by: i64) -> Result<(), Status> {
    // SAFETY: no pointers.
    status(unsafe { proxy_increment_metric(id, by) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: no pointers.
    status(unsafe { proxy_record_metric(id, value) })
}
