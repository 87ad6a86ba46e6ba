//! Loaders over the committed photos: shapes, order, determinism, bad images.

use std::fs;
use std::path::{Path, PathBuf};

use tame_data::{
    load_rgb, to_chw_f32, Batch, DataError, ImageList, Loader, LoaderConfig, IMAGE_LEN,
};

fn samples_dir() -> PathBuf {
    tame_testdata::photos_dir()
}

/// A list of the five committed photos.
fn sample_list() -> ImageList {
    let text: String = tame_testdata::PHOTOS
        .iter()
        .map(|(name, class)| format!("{name} {class}\n"))
        .collect();
    ImageList::parse(&text, "samples.txt").unwrap()
}

fn config(mut c: LoaderConfig, workers: usize) -> LoaderConfig {
    c.workers = workers;
    c
}

fn collect(loader: &Loader, epoch: u64) -> Vec<Batch> {
    loader
        .epoch(epoch)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn same(a: &[Batch], b: &[Batch]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.images == y.images && x.labels == y.labels && x.entries == y.entries)
}

#[test]
fn evaluation_batches_have_the_expected_shapes_and_order() {
    let list = sample_list();
    let loader = Loader::new(
        list.clone(),
        samples_dir(),
        config(LoaderConfig::evaluation(4), 2),
    )
    .unwrap();
    assert_eq!(loader.num_batches(), 2);
    let batches = collect(&loader, 0);
    assert_eq!(batches.iter().map(Batch::len).collect::<Vec<_>>(), [4, 1]);
    let entries: Vec<_> = batches.iter().flat_map(|b| b.entries.clone()).collect();
    assert_eq!(entries, list.entries());
    for b in &batches {
        assert_eq!(b.images.len(), b.len() * IMAGE_LEN);
        assert!(b.skipped.is_empty());
        assert!(b.images.iter().all(|v| (0.0..=1.0).contains(v)));
        let want: Vec<u32> = b.entries.iter().map(|e| e.label).collect();
        assert_eq!(b.labels, want);
    }
    // The second image, already 224x224, is used as is, as CHW floats.
    let second = "astronaut_224_rgba.png";
    let mut want = vec![0.0; IMAGE_LEN];
    to_chw_f32(&load_rgb(samples_dir().join(second)).unwrap(), &mut want);
    assert_eq!(batches[0].entries[1].path, Path::new(second));
    assert_eq!(&batches[0].images[IMAGE_LEN..2 * IMAGE_LEN], &want[..]);
}

#[test]
fn training_batches_are_reproducible_whatever_the_worker_count() {
    let one = Loader::new(
        sample_list(),
        samples_dir(),
        config(LoaderConfig::training(3, 42), 1),
    )
    .unwrap();
    let two = Loader::new(
        sample_list(),
        samples_dir(),
        config(LoaderConfig::training(3, 42), 2),
    )
    .unwrap();
    let e0 = collect(&one, 0);
    assert_eq!(e0.iter().map(Batch::len).collect::<Vec<_>>(), [3, 2]);
    assert!(same(&e0, &collect(&one, 0)), "same loader, same epoch");
    assert!(same(&e0, &collect(&two, 0)), "1 vs 2 workers");
    assert!(
        same(&collect(&one, 1), &collect(&two, 1)),
        "1 vs 2 workers, epoch 1"
    );
    assert!(!same(&e0, &collect(&one, 1)), "epochs differ");
    let other = Loader::new(
        sample_list(),
        samples_dir(),
        config(LoaderConfig::training(3, 43), 2),
    )
    .unwrap();
    assert!(!same(&e0, &collect(&other, 0)), "seeds differ");
}

#[test]
fn shuffling_permutes_the_list_per_epoch() {
    let loader = Loader::new(sample_list(), samples_dir(), LoaderConfig::training(4, 1)).unwrap();
    let (o0, o1) = (loader.order(0), loader.order(1));
    assert_ne!(o0, o1);
    let mut sorted = o0.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..5).collect::<Vec<_>>());
    let lines: Vec<usize> = collect(&loader, 0)
        .iter()
        .flat_map(|b| b.entries.iter().map(|e| e.line))
        .collect();
    assert_eq!(lines, o0.iter().map(|i| i + 1).collect::<Vec<_>>());
}

#[test]
fn no_shuffle_no_augment_training_equals_evaluation() {
    let mut c = LoaderConfig::training(4, 9);
    c.shuffle = false;
    c.augmentation = tame_data::Augmentation::None;
    let train = Loader::new(sample_list(), samples_dir(), c).unwrap();
    let eval = Loader::new(sample_list(), samples_dir(), LoaderConfig::evaluation(4)).unwrap();
    assert!(same(&collect(&train, 3), &collect(&eval, 0)));
}

#[test]
fn augmentation_differs_from_the_evaluation_transform() {
    let mut c = LoaderConfig::training(10, 5);
    c.shuffle = false;
    let train = Loader::new(sample_list(), samples_dir(), c).unwrap();
    let eval = Loader::new(sample_list(), samples_dir(), LoaderConfig::evaluation(10)).unwrap();
    let (t, e) = (collect(&train, 0), collect(&eval, 0));
    assert_eq!(t[0].labels, e[0].labels);
    assert_ne!(t[0].images, e[0].images);
}

/// A directory with three good images, a corrupt one and a missing one, and its list.
fn list_with_bad_images(dir: &Path) -> ImageList {
    for name in ["coffee.jpg", "rocket.jpg", "chelsea_small.jpg"] {
        fs::copy(samples_dir().join(name), dir.join(name)).unwrap();
    }
    fs::write(dir.join("broken.JPEG"), b"\xff\xd8\xff not really a jpeg").unwrap();
    let text =
        "coffee.jpg 967\nbroken.JPEG 1\nrocket.jpg 812\n\nmissing 2\nchelsea_small.jpg 285\n";
    let list_path = dir.join("train.txt");
    fs::write(&list_path, text).unwrap();
    ImageList::read(list_path).unwrap()
}

fn names_list_and_line(err: &DataError, list: &Path, line: usize) {
    match err {
        DataError::Image {
            list: l, line: n, ..
        } => assert_eq!((l.as_path(), *n), (list, line)),
        other => panic!("expected an image error, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{}:{line}: ", list.display())),
        "{msg}"
    );
}

#[test]
fn training_skips_and_counts_bad_images() {
    let dir = tempfile::tempdir().unwrap();
    let list = list_with_bad_images(dir.path());
    let list_path = list.source().to_path_buf();
    let mut c = config(LoaderConfig::training(2, 0), 2);
    c.shuffle = false;
    let loader = Loader::new(list, dir.path(), c).unwrap();
    let mut epoch = loader.epoch(0).unwrap();
    let mut lines = Vec::new();
    let mut skipped = Vec::new();
    for batch in epoch.by_ref() {
        let batch = batch.unwrap();
        assert_eq!(batch.images.len(), batch.len() * IMAGE_LEN);
        lines.extend(batch.entries.iter().map(|e| e.line));
        skipped.extend(batch.skipped);
    }
    assert_eq!(lines, [1, 3, 6]);
    assert_eq!(epoch.skipped(), 2);
    names_list_and_line(&skipped[0], &list_path, 2);
    names_list_and_line(&skipped[1], &list_path, 5);
    assert!(
        skipped[1].to_string().contains("missing.jpg"),
        "{}",
        skipped[1]
    );
}

#[test]
fn strict_training_stops_at_the_first_bad_image() {
    let dir = tempfile::tempdir().unwrap();
    let list = list_with_bad_images(dir.path());
    let list_path = list.source().to_path_buf();
    let mut c = LoaderConfig::training(1, 0);
    c.shuffle = false;
    c.strict = true;
    let loader = Loader::new(list, dir.path(), c).unwrap();
    let items: Vec<_> = loader.epoch(0).unwrap().collect();
    assert_eq!(
        items.len(),
        2,
        "one good batch, then the error, then nothing"
    );
    assert!(items[0].is_ok());
    names_list_and_line(items[1].as_ref().unwrap_err(), &list_path, 2);
}

#[test]
fn evaluation_fails_on_a_bad_image() {
    let dir = tempfile::tempdir().unwrap();
    let list = list_with_bad_images(dir.path());
    let list_path = list.source().to_path_buf();
    let loader = Loader::new(list, dir.path(), LoaderConfig::evaluation(4)).unwrap();
    let err = loader
        .epoch(0)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap_err();
    names_list_and_line(&err, &list_path, 2);
}

#[test]
fn dropping_an_epoch_early_stops_it() {
    let loader = Loader::new(sample_list(), samples_dir(), LoaderConfig::evaluation(1)).unwrap();
    let mut epoch = loader.epoch(0).unwrap();
    assert_eq!(epoch.next().unwrap().unwrap().len(), 1);
    drop(epoch); // must not hang on the producer blocked on a full channel
    assert_eq!(collect(&loader, 0).len(), 5);
}

#[test]
fn invalid_configurations_are_errors() {
    let err = Loader::new(sample_list(), samples_dir(), LoaderConfig::evaluation(0))
        .err()
        .unwrap();
    assert!(matches!(err, DataError::Config(_)), "{err:?}");
    let err = Loader::new(
        sample_list(),
        samples_dir(),
        config(LoaderConfig::evaluation(2), 0),
    )
    .err()
    .unwrap();
    assert!(matches!(err, DataError::Config(_)), "{err:?}");
}
