//! Data for TAME: ILSVRC list files, image decoding, torchvision-compatible transforms and
//! batching loaders.
//!
//! The crate knows nothing of tensors: batches are plain `Vec<f32>` in CHW layout, which
//! the caller turns into its tensors.
//!
//! ```no_run
//! use tame_data::{ImageList, Loader, LoaderConfig};
//!
//! let list = ImageList::read("Evaluation_2000.txt")?;
//! let loader = Loader::new(list, "ILSVRC2012_img_val", LoaderConfig::evaluation(32))?;
//! for batch in loader.epoch(0)? {
//!     let batch = batch?; // an unreadable image names its list file and line
//!     assert_eq!(batch.images.len(), batch.len() * tame_data::IMAGE_LEN);
//! }
//! # Ok::<(), tame_data::DataError>(())
//! ```

mod augment;
mod decode;
mod error;
mod list;
mod loader;
mod transform;

pub use augment::{
    augment, color_jitter, heavy_transform, random_resized_crop, Augmentation, COLLAGE_PROBABILITY,
    CROP_RATIO, CROP_SCALE, JITTER,
};
pub use decode::{decode_rgb, load_rgb, load_rgb_within, DEFAULT_MAX_IMAGE_SIDE};
pub use error::{DataError, DecodeError};
pub use image::RgbImage;
pub use list::{ImageList, ListEntry, DEFAULT_EXTENSION, NUM_CLASSES};
pub use loader::{Batch, Epoch, Loader, LoaderConfig};
pub use transform::{
    batch_shape, center_crop, crop, hflip, random_crop, resize, resize_shorter, resized_size,
    to_chw_f32, train_transform, Applied, Preprocessing, CROP_SIDE, CROP_SIZE, IMAGE_LEN,
    RESIZE_SHORTER,
};
