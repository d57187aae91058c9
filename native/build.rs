//! Bind every Envoy callback when Envoy loads the module (`-z now`): a callback missing from
//! the running Envoy then refuses the module at start-up instead of crashing mid-request.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,now");
    }
}
