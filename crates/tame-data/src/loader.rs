//! Batching loaders: parallel decoding on a dedicated thread pool, prefetched on a
//! background thread so the model does not wait for images.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use image::RgbImage;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::augment::{augment, Augmentation};
use crate::decode::{load_rgb_within, DEFAULT_MAX_IMAGE_SIDE};
use crate::error::DataError;
use crate::list::{ImageList, ListEntry};
use crate::transform::{to_chw_f32, Preprocessing};

/// How a [`Loader`] batches, orders and transforms a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Images per batch (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Threads decoding and transforming images (a pool owned by the loader).
    pub workers: usize,
    /// Batches kept ready beyond the one being decoded.
    pub prefetch: usize,
    /// Seed of the shuffling and of the augmentation draws.
    pub seed: u64,
    /// Shuffle the list anew every epoch (from `seed` and the epoch number).
    pub shuffle: bool,
    /// The training augmentation; [`Augmentation::None`] applies `preprocessing`.
    pub augmentation: Augmentation,
    /// How an image becomes the backbone's input when not augmented.
    pub preprocessing: Preprocessing,
    /// A bad image is an error that ends the epoch; otherwise it is skipped and counted.
    pub strict: bool,
    /// Images wider or taller than this are bad images, refused before they are decoded.
    pub max_image_side: u32,
}

impl LoaderConfig {
    /// Training defaults: shuffled, augmented, bad images skipped, one worker per core.
    pub fn training(batch_size: usize, seed: u64) -> Self {
        Self {
            batch_size,
            workers: default_workers(),
            prefetch: 2,
            seed,
            shuffle: true,
            augmentation: Augmentation::Reference,
            preprocessing: Preprocessing::IMAGENET,
            strict: false,
            max_image_side: DEFAULT_MAX_IMAGE_SIDE,
        }
    }

    /// Evaluation defaults: list order, the ImageNet preprocessing, a bad image is an error.
    pub fn evaluation(batch_size: usize) -> Self {
        Self {
            batch_size,
            workers: default_workers(),
            prefetch: 2,
            seed: 0,
            shuffle: false,
            augmentation: Augmentation::None,
            preprocessing: Preprocessing::IMAGENET,
            strict: true,
            max_image_side: DEFAULT_MAX_IMAGE_SIDE,
        }
    }
}

fn default_workers() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// A batch of transformed images.
#[derive(Debug)]
pub struct Batch {
    /// `len() x 3 x side x side` floats in `[0, 1]` (the side of the crops), CHW per image,
    /// images in batch order.
    pub images: Vec<f32>,
    /// The label of each image.
    pub labels: Vec<u32>,
    /// The list entry of each image.
    pub entries: Vec<ListEntry>,
    /// Images of this batch that were skipped (non-strict mode only), each error naming
    /// the list file and line; the batch is smaller by as many images (possibly empty).
    pub skipped: Vec<DataError>,
}

impl Batch {
    /// Number of images in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch holds no image (every one of its images was skipped).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Shared, immutable state of a loader and its epochs' producer threads.
struct Shared {
    list: ImageList,
    image_dir: PathBuf,
    config: LoaderConfig,
    pool: rayon::ThreadPool,
}

/// Loads the images of a list in batches, epoch after epoch.
///
/// Batches are reproducible: the order of an epoch derives from `seed` and the epoch
/// number, and each image's augmentation from `seed`, the epoch and the image's index in
/// the list, so the worker count never changes what comes out (for a given version of
/// `rand`, whose `StdRng` may change between releases).
pub struct Loader {
    shared: Arc<Shared>,
}

impl Loader {
    /// A loader of `list`, whose paths are relative to `image_dir`.
    pub fn new(
        list: ImageList,
        image_dir: impl Into<PathBuf>,
        config: LoaderConfig,
    ) -> Result<Self, DataError> {
        if config.batch_size == 0 {
            return Err(DataError::Config("batch size must be at least 1".into()));
        }
        if config.workers == 0 {
            return Err(DataError::Config("workers must be at least 1".into()));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.workers)
            .thread_name(|i| format!("tame-data-{i}"))
            .build()
            .map_err(|e| DataError::Threads(e.to_string()))?;
        Ok(Self {
            shared: Arc::new(Shared {
                list,
                image_dir: image_dir.into(),
                config,
                pool,
            }),
        })
    }

    /// The list being loaded.
    pub fn list(&self) -> &ImageList {
        &self.shared.list
    }

    /// The loader's configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.shared.config
    }

    /// Batches per epoch (counting a last, smaller one).
    pub fn num_batches(&self) -> usize {
        self.shared
            .list
            .len()
            .div_ceil(self.shared.config.batch_size)
    }

    /// The list indices of `epoch` in the order they are batched.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.shared.list.len()).collect();
        if self.shared.config.shuffle {
            let seed = mix(&[self.shared.config.seed, SHUFFLE_STREAM, epoch]);
            order.shuffle(&mut StdRng::seed_from_u64(seed));
        }
        order
    }

    /// Starts decoding `epoch` in the background and returns its batches as an iterator.
    ///
    /// Dropping the iterator early stops the background work.
    pub fn epoch(&self, epoch: u64) -> Result<Epoch, DataError> {
        let order = self.order(epoch);
        let shared = Arc::clone(&self.shared);
        let (tx, rx) = mpsc::sync_channel(shared.config.prefetch);
        let producer = thread::Builder::new()
            .name("tame-data-prefetch".into())
            .spawn(move || {
                for chunk in order.chunks(shared.config.batch_size) {
                    let batch = shared.load_batch(chunk, epoch);
                    let failed = batch.is_err();
                    // A send error means the consumer dropped the epoch: stop quietly.
                    if tx.send(batch).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(|e| DataError::Threads(e.to_string()))?;
        Ok(Epoch {
            rx: Some(rx),
            producer: Some(producer),
            skipped: 0,
        })
    }
}

/// Marks the shuffling generator's seed words, keeping it apart from the per-image ones.
const SHUFFLE_STREAM: u64 = 0x5348_5546_464c_4521;

impl Shared {
    fn load_batch(&self, indices: &[usize], epoch: u64) -> Result<Batch, DataError> {
        let decoded: Vec<Result<Vec<f32>, DataError>> = self.pool.install(|| {
            indices
                .par_iter()
                .map(|&index| self.load_image(index, epoch))
                .collect()
        });
        let mut batch = Batch {
            images: Vec::with_capacity(indices.len() * self.config.preprocessing.image_len()),
            labels: Vec::with_capacity(indices.len()),
            entries: Vec::with_capacity(indices.len()),
            skipped: Vec::new(),
        };
        for (&index, result) in indices.iter().zip(decoded) {
            match result {
                Ok(pixels) => {
                    let entry = &self.list.entries()[index];
                    batch.images.extend_from_slice(&pixels);
                    batch.labels.push(entry.label);
                    batch.entries.push(entry.clone());
                }
                Err(e) if self.config.strict => return Err(e),
                Err(e) => batch.skipped.push(e),
            }
        }
        Ok(batch)
    }

    fn decode(&self, index: usize) -> Result<RgbImage, DataError> {
        let entry = &self.list.entries()[index];
        let path = entry.resolve(&self.image_dir);
        load_rgb_within(path, self.config.max_image_side).map_err(|source| DataError::Image {
            list: self.list.source().to_path_buf(),
            line: entry.line,
            source,
        })
    }

    fn load_image(&self, index: usize, epoch: u64) -> Result<Vec<f32>, DataError> {
        let image = self.decode(index)?;
        let image = match self.config.augmentation {
            Augmentation::None => self.config.preprocessing.apply(&image).0,
            augmentation => {
                let mut rng = StdRng::seed_from_u64(mix(&[self.config.seed, epoch, index as u64]));
                let entries = self.list.entries().len();
                let distractor = if augmentation.needs_distractor() && entries > 1 {
                    // Any other image of the list, drawn from this image's stream.
                    let other = (index + rng.random_range(1..entries)) % entries;
                    Some(self.decode(other)?)
                } else {
                    None
                };
                augment(augmentation, &image, distractor.as_ref(), &mut rng)
            }
        };
        let mut pixels = vec![0.0; 3 * image.width() as usize * image.height() as usize];
        to_chw_f32(&image, &mut pixels);
        Ok(pixels)
    }
}

/// Hashes words into one seed (SplitMix64 steps), so nearby seeds, epochs and indices
/// give unrelated generators.
fn mix(words: &[u64]) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for &w in words {
        h = h.wrapping_add(w).wrapping_add(0x9E37_79B9_7F4A_7C15);
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 31;
    }
    h
}

/// The batches of one epoch, decoded ahead on a background thread.
///
/// In strict mode the first bad image is yielded as an error and ends the epoch.
pub struct Epoch {
    rx: Option<Receiver<Result<Batch, DataError>>>,
    producer: Option<JoinHandle<()>>,
    skipped: usize,
}

impl Epoch {
    /// Images skipped so far in this epoch (all of them once the iterator is exhausted).
    pub fn skipped(&self) -> usize {
        self.skipped
    }
}

impl Iterator for Epoch {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.rx.as_ref()?.recv().ok();
        match &item {
            Some(Ok(batch)) => self.skipped += batch.skipped.len(),
            // The producer has finished (or failed): release the channel.
            Some(Err(_)) | None => self.rx = None,
        }
        item
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        // Closing the channel first makes a producer blocked on `send` give up.
        self.rx = None;
        if let Some(producer) = self.producer.take() {
            // A panicking producer has already reported through the closed channel.
            let _ = producer.join();
        }
    }
}
