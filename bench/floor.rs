//! The floor for cold-start and memory figures: a bare `lambda_runtime` function that answers its
//! payload, on the same runtime flavour as the real function and with nothing else at start-up.
//!
//! `cargo build --release --example floor`; used by `bench/coldstart.py` and `bench/failfast.py`.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        Ok::<Value, Error>(event.payload)
    }))
    .await
}
