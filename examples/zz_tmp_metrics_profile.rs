use detlab::metrics::{self, EvalConfig, io::EvalInput};
use std::time::Instant;
fn main() {
    let input = EvalInput::read(std::path::Path::new("/tmp/benchin/eval_input.json")).unwrap();
    let (gt, pred) = (input.gt(), input.pred());
    let cfg = EvalConfig { num_classes: Some(2), pr_curves: false, ..EvalConfig::default() };
    for _ in 0..5 {
        let t = Instant::now();
        let th = cfg.all_thresholds();
        let m = metrics::matching::match_all(&gt, &pred, &th, 100);
        let t1 = t.elapsed();
        let r = metrics::evaluate(&gt, &pred, &cfg).unwrap();
        let t2 = t.elapsed();
        println!("match {:?} evaluate {:?} {}", t1, t2 - t1, r.scalars.len() + m.len());
    }
}
