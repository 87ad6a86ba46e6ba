//! Throughput of decode + Resize(256) + crop + to-float on the sample images.
//!
//! ```text
//! cargo run --release -p tame-data --example bench_decode -- [WORKERS] [ROUNDS] [NAME_PART] [DIR]
//! ```
//! Prints images/s for one thread calling the functions directly, then for the
//! [`Loader`] (batches of 32, `WORKERS` decoding threads) with the evaluation and the
//! training transforms. Each measurement goes over the images of `DIR` (default: the
//! committed test photos) `ROUNDS` times (only those whose name contains `NAME_PART`, if
//! given).

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tame_data::{
    load_rgb, to_chw_f32, train_transform, ImageList, Loader, LoaderConfig, Preprocessing,
    IMAGE_LEN,
};

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let workers: usize = args.next().map_or(Ok(2), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(200), |a| a.parse())?;
    let name_part = args.next().unwrap_or_default();
    let dir = args
        .next()
        .map_or_else(tame_testdata::photos_dir, PathBuf::from);
    let mut names: Vec<String> = std::fs::read_dir(&dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, std::io::Error>>()?;
    names.retain(|name| {
        let lower = name.to_ascii_lowercase();
        name.contains(&name_part) && [".jpg", ".jpeg", ".png"].iter().any(|e| lower.ends_with(e))
    });
    names.sort();
    let n = names.len() * rounds;
    println!("{} images x {rounds} rounds = {n} images", names.len());

    // One thread, direct calls: the per-core cost of the pipeline.
    let mut out = vec![0.0f32; IMAGE_LEN];
    let start = Instant::now();
    for _ in 0..rounds {
        for name in &names {
            let (input, _) = Preprocessing::IMAGENET.apply(&load_rgb(dir.join(name))?);
            to_chw_f32(&input, &mut out);
        }
    }
    report("1 thread, eval transform", n, start);
    let mut rng = StdRng::seed_from_u64(0);
    let start = Instant::now();
    for _ in 0..rounds {
        for name in &names {
            to_chw_f32(
                &train_transform(&load_rgb(dir.join(name))?, &mut rng),
                &mut out,
            );
        }
    }
    report("1 thread, train transform", n, start);

    // The loader, as a trainer or evaluator uses it.
    let text: String = (0..rounds)
        .flat_map(|_| names.iter().map(|name| format!("{name} 0\n")))
        .collect();
    for (label, mut config) in [
        ("eval", LoaderConfig::evaluation(32)),
        ("train", LoaderConfig::training(32, 0)),
    ] {
        config.workers = workers;
        let loader = Loader::new(ImageList::parse(&text, "bench")?, &dir, config)?;
        let start = Instant::now();
        let mut seen = 0;
        for batch in loader.epoch(0)? {
            seen += batch?.len();
        }
        report(&format!("Loader, {workers} workers, {label}"), seen, start);
    }
    Ok(())
}

fn report(what: &str, images: usize, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!("{what:<32} {:>8.0} images/s", images as f64 / secs);
}
