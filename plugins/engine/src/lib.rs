//! placeholder
pub fn cuda() -> bool { tch::Cuda::is_available() }
