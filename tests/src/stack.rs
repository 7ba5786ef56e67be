//! The usual stack of an end-to-end test: a recording mock vendor behind every listener, the
//! real ledger, and Envoy with the filter polling it.

use bridle_core::policy::CompiledPolicy;

use crate::envoy::{Envoy, Setup};
use crate::keys::Keys;
use crate::ledger::Ledger;
use crate::mock::MockVendor;

pub struct Stack {
    pub mock: MockVendor,
    pub ledger: Ledger,
    pub envoy: Envoy,
}

impl Stack {
    /// Starts all three with `policies`, under a fresh signing key; Envoy is ready and has its
    /// first revocation set when this returns.
    pub async fn start(policies: Vec<CompiledPolicy>) -> Stack {
        let mock = MockVendor::start().await;
        let keys = Keys::generate();
        let ledger = Ledger::start(&policies, &keys).await;
        let mut setup = Setup::new(policies, &keys).upstream_all(&mock.url());
        setup.ledger = Some(ledger.url());
        let envoy = Envoy::start(&setup).await.unwrap();
        Stack {
            mock,
            ledger,
            envoy,
        }
    }
}
