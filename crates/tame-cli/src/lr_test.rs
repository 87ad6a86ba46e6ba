//! `tame lr-test` (the range test of section 5) and `tame plot-lr` (its curves, log-log).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tame_train::{lr_range_test, plot_lr_curves, suggest_max_lr, LrCurve, LrTestConfig, Trainer};

use crate::common::{check_writable_dir, write_atomically};
use crate::skipped::{SkipArgs, Skipped};
use crate::stop::StopSignals;
use crate::train::SetupArgs;

#[derive(Args)]
pub struct LrTestArgs {
    #[command(flatten)]
    setup: SetupArgs,

    /// Folder for `<model>_<version>_<batch>.json` and `.png`.
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,

    #[command(flatten)]
    skip: SkipArgs,
}

#[derive(Args)]
pub struct PlotLrArgs {
    /// Range-test files (`[[lrs...],[losses...]]`), one curve each.
    #[arg(required = true)]
    files: Vec<PathBuf>,

    /// Add a panel with the moving average of the losses over this many points.
    #[arg(long)]
    window: Option<usize>,

    /// The PNG to write.
    #[arg(long, default_value = "lr_test.png")]
    out: PathBuf,
}

/// How the suggested maximum learning rate is chosen, for the user.
const RULE: &str = "the steepest descent of the smoothed loss against log10(lr), \
                    up to the lowest loss";

pub fn run(args: LrTestArgs) -> Result<()> {
    check_writable_dir(&args.out_dir)?;
    let setup = args.setup.open(true)?;
    // The schedule of the trainer is not used: the range test sets the rates itself.
    let config = args.setup.train_config(&setup, 1, 1.0);
    let am = args.setup.initial_am(&setup.am_config, &setup.device)?;
    let batches = setup.loader.num_batches() as u64;
    let mut trainer = Trainer::new(setup.backbone.as_ref(), am, config, batches)?;
    let bar = ProgressBar::new(batches);
    bar.set_style(
        ProgressStyle::with_template("lr test [{bar:30}] {pos}/{len} ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let stop = StopSignals::watch()?;
    let outcome = lr_range_test(
        &mut trainer,
        &setup.loader,
        &LrTestConfig::default(),
        &mut |_, lr, loss| {
            bar.set_message(format!("lr {lr:.2e} smoothed loss {loss:.4}"));
            bar.inc(1);
        },
        stop.flag(),
    )?;
    bar.finish();
    let mut skipped = Skipped::new(true);
    for error in &outcome.skipped {
        if let Some(line) = skipped.add(error) {
            eprintln!("{line}");
        }
    }
    let curve = outcome.curve;
    match outcome.non_finite {
        Some(e) if curve.lrs.is_empty() => bail!("{e}"),
        Some(e) => eprintln!("warning: {e}"),
        None if curve.lrs.is_empty() => bail!("the range test recorded no point"),
        None => {}
    }
    write_curve(&args, setup.batch_size, &curve)?;
    if stop.flag().load(std::sync::atomic::Ordering::SeqCst) {
        eprintln!("interrupted: the curve so far is written");
        return Err(stop.exit());
    }
    skipped.finish(args.skip.skip_bad)
}

/// Writes the curve as JSON and PNG and prints the suggested maximum learning rate.
fn write_curve(args: &LrTestArgs, batch_size: usize, curve: &LrCurve) -> Result<()> {
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let stem = format!(
        "{}_{}_{}",
        args.setup.model.model.name(),
        args.setup.version,
        batch_size
    );
    let json = args.out_dir.join(format!("{stem}.json"));
    write_atomically(&json, curve.to_json().as_bytes())?;
    let png = args.out_dir.join(format!("{stem}.png"));
    let (x, y) = plot_lr_curves(std::slice::from_ref(curve), None, &png)?;
    println!("wrote {} and {}", json.display(), png.display());
    println!(
        "{} points; lr {:.3e} .. {:.3e}, loss {:.4} .. {:.4} (log-log, grid at powers of ten)",
        curve.lrs.len(),
        x.0,
        x.1,
        y.0,
        y.1
    );
    match suggest_max_lr(curve) {
        Some(lr) => println!("suggested --max-lr: {lr:.3e} ({RULE})"),
        None => println!("no suggestion: the loss never fell ({RULE})"),
    }
    Ok(())
}

pub fn plot(args: PlotLrArgs) -> Result<()> {
    let curves = args
        .files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            LrCurve::from_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let (x, y) = plot_lr_curves(&curves, args.window, &args.out)?;
    println!("wrote {}", args.out.display());
    println!(
        "lr {:.3e} .. {:.3e}, loss {:.4} .. {:.4} (log-log, grid at powers of ten)",
        x.0, x.1, y.0, y.1
    );
    for (file, curve) in args.files.iter().zip(&curves) {
        let suggestion = suggest_max_lr(curve).map_or("none".into(), |lr| format!("{lr:.3e}"));
        println!("{}: suggested --max-lr {suggestion}", file.display());
    }
    Ok(())
}
