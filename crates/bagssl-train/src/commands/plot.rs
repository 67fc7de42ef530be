//! `bagssl-train plot RUN_DIR [--out FILE.png]`: the training curves of a run from its
//! `metrics.jsonl`: the loss, its terms, the learning rate, the collapse monitor and the
//! evaluation accuracies against the step. `train` draws the same figure (`metrics.png`) when it
//! ends.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cli::PlotArgs;
use crate::plot::{Figure, Panel, Series};

/// The figure's file in a run directory.
pub const FIGURE: &str = "metrics.png";

pub fn run(args: PlotArgs) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(|| args.run_dir.join(FIGURE));
    write(&args.run_dir, &out)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Draws the figure of the run in `run_dir` into `out`.
pub fn write(run_dir: &Path, out: &Path) -> Result<()> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let lines = parse(&text, &path)?;
    figure(&lines, &run_label(run_dir)).save(out)
}

/// The run directory as its title says it (its last two components).
fn run_label(run_dir: &Path) -> String {
    let parts: Vec<_> = run_dir.components().rev().take(2).collect();
    parts.into_iter().rev().collect::<PathBuf>().display().to_string()
}

fn parse(text: &str, path: &Path) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(l).with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))?;
        out.push(v);
    }
    if !out.iter().any(|l| l["event"] == "step") {
        bail!("{}: no step lines (\"event\": \"step\") to plot", path.display());
    }
    Ok(out)
}

/// `(step, line[key])` over the step lines that have the key, by step. A resumed run appends to
/// the file, and may log again steps that the interrupted run had logged after its checkpoint:
/// the later line wins.
fn curve(steps: &[&Value], key: &str) -> Vec<(f64, f64)> {
    let by_step: std::collections::BTreeMap<u64, f64> =
        steps.iter().filter_map(|l| Some((l["step"].as_u64()?, l[key].as_f64()?))).collect();
    by_step.into_iter().map(|(s, v)| (s as f64, v)).collect()
}

/// The loss terms in the loss' own order (others after them).
const TERMS: [&str; 3] = ["invariance", "variance", "covariance"];

/// Keys of an eval line that are not accuracies.
const EVAL_META: [&str; 4] = ["event", "model", "step", "eval_s"];

pub fn figure(lines: &[Value], label: &str) -> Figure {
    let steps: Vec<&Value> = lines.iter().filter(|l| l["event"] == "step").collect();
    let last_step = steps.iter().filter_map(|l| l["step"].as_f64()).fold(0.0, f64::max);
    let collapses: Vec<f64> =
        lines.iter().filter(|l| l["event"] == "collapse").filter_map(|l| l["step"].as_f64()).collect();
    let step_panel = |title: &str, y: &str, series: Vec<Series>| Panel {
        title: title.into(),
        x_label: "step".into(),
        y_label: y.into(),
        series,
        empty_note: "not in metrics.jsonl".into(),
        ..Panel::default()
    };
    let loss = step_panel("bag-VICReg loss", "loss", vec![Series::line("loss", curve(&steps, "loss"))]);
    // The terms as the loss computes them, unweighted; a log axis shows all three.
    let mut term_names: Vec<String> = steps
        .first()
        .and_then(|l| l.as_object())
        .map(|o| {
            o.keys()
                .filter(|k| !["step", "epoch", "loss", "lr", "event", "elapsed_s"].contains(&k.as_str()))
                .filter(|k| !k.starts_with("embedding_") && !k.starts_with("projection_"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    term_names.sort_by_key(|k| TERMS.iter().position(|t| t == k).unwrap_or(TERMS.len()));
    let terms = Panel {
        log_y: true,
        ..step_panel(
            "loss terms (unweighted)",
            "value (log)",
            term_names.iter().map(|k| Series::line(k, curve(&steps, k))).collect(),
        )
    };
    let lr = step_panel("learning rate", "lr", vec![Series::line("lr", curve(&steps, "lr"))]);
    let rank = Panel {
        vlines: collapses.clone(),
        vline_name: "collapse flagged".into(),
        ..step_panel(
            "collapse monitor: effective rank (RankMe)",
            "rank",
            vec![
                Series::line("h (embedding)", curve(&steps, "embedding_rank")),
                Series::line("z (projection)", curve(&steps, "projection_rank")),
            ],
        )
    };
    let std = Panel {
        log_y: true,
        hlines: vec![(bagssl_model::COLLAPSE_STD, format!("z collapse < {}", bagssl_model::COLLAPSE_STD))],
        vlines: collapses,
        vline_name: "collapse flagged".into(),
        ..step_panel(
            "collapse monitor: smallest per-dimension std",
            "std (log)",
            vec![
                Series::line("h (embedding)", curve(&steps, "embedding_std_min")),
                Series::line("z (projection)", curve(&steps, "projection_std_min")),
            ],
        )
    };
    // Evaluations: the untrained encoder at step 0, the trained one at its step (older runs'
    // eval lines have no step: the last one logged).
    let mut evals: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for l in lines.iter().filter(|l| l["event"] == "eval") {
        let step = l["step"].as_f64().unwrap_or(if l["model"] == "untrained" { 0.0 } else { last_step });
        for (k, v) in l.as_object().into_iter().flatten() {
            let Some(v) = v.as_f64() else { continue };
            if EVAL_META.contains(&k.as_str()) {
                continue;
            }
            match evals.iter_mut().find(|(n, _)| n == k) {
                Some((_, pts)) => pts.push((step, v)),
                None => evals.push((k.clone(), vec![(step, v)])),
            }
        }
    }
    evals.iter_mut().for_each(|(_, p)| p.sort_by(|a, b| a.0.total_cmp(&b.0)));
    let acc = Panel {
        y_range: Some((0.0, 1.0)),
        empty_note: "no evaluation in metrics.jsonl yet".into(),
        ..step_panel(
            "evaluation accuracy (untrained at step 0)",
            "accuracy",
            evals.iter().map(|(k, p)| Series::with_markers(k, p.clone())).collect(),
        )
    };
    Figure {
        title: format!("bagssl run {label}: {} logged steps", steps.len()),
        panels: vec![loss, terms, lr, rank, std, acc],
        grid: (3, 2),
        size: (1500, 1350),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figure_reads_steps_collapses_and_evals() {
        let text = r#"{"step":10,"epoch":0,"loss":20.0,"invariance":0.1,"variance":0.5,"covariance":1.0,"lr":1e-4,"embedding_rank":30.0,"projection_rank":20.0,"embedding_std_min":0.4,"projection_std_min":0.5,"event":"step","elapsed_s":1.0}
{"step":20,"epoch":0,"loss":18.0,"invariance":0.1,"variance":0.4,"covariance":0.9,"lr":2e-4,"embedding_rank":3.0,"projection_rank":1.5,"embedding_std_min":0.4,"projection_std_min":0.001,"event":"step","elapsed_s":2.0}
{"event":"collapse","step":20,"reason":"x","stopped":false}
{"event":"eval","model":"trained","knn":0.5,"linear":0.6,"knn_single_patch":0.3,"eval_s":1.0}
{"event":"eval","model":"untrained","knn":0.2,"linear":0.3,"knn_single_patch":0.1,"eval_s":1.0,"step":0}
"#;
        let lines = parse(text, Path::new("m.jsonl")).unwrap();
        let f = figure(&lines, "runs/x");
        let names = |i: usize| f.panels[i].series.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(1), ["invariance", "variance", "covariance"]);
        assert_eq!(f.panels[3].vlines, [20.0]);
        assert_eq!(names(5), ["knn", "knn_single_patch", "linear"]);
        assert_eq!(f.panels[5].series[0].points, [(0.0, 0.2), (20.0, 0.5)], "untrained at 0, trained at the end");
        assert!(f.render().is_ok());
        let e = parse("{\"event\":\"eval\"}\n", Path::new("m.jsonl")).unwrap_err().to_string();
        assert!(e.contains("m.jsonl") && e.contains("no step lines"), "{e}");
        let e = parse("{oops\n", Path::new("m.jsonl")).unwrap_err().to_string();
        assert!(e.contains("m.jsonl:1"), "{e}");
    }
}
