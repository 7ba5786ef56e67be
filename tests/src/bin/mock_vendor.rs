//! A stand-in vendor API for `make run` and the README walkthrough: answers like the vendor
//! would, and prints each request with a description of the credential it carried (never
//! the credential itself).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:12111".to_string());
    let mock = bridle_e2e::mock::MockVendor::start_on(&bind, true).await;
    println!("mock vendor listening on {}", mock.url());
    tokio::signal::ctrl_c().await.ok();
}
