fn main(){ let t = tch::Tensor::from_slice(&[1f32,2.0]); println!("{} {}", davi_engine::cuda(), t.sum(tch::Kind::Float).double_value(&[])); }
