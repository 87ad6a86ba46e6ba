//! The 1000 ImageNet-1k class names, in class-index order (as torchvision lists them).

const NAMES: &str = include_str!("imagenet_classes.txt");

/// The name of ImageNet class `index`, or `None` outside 0..1000.
pub fn class_name(index: usize) -> Option<&'static str> {
    NAMES.lines().nth(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_indexed_like_torchvision() {
        assert_eq!(NAMES.lines().count(), 1000);
        assert_eq!(class_name(0), Some("tench"));
        assert_eq!(class_name(162), Some("beagle"));
        assert_eq!(class_name(999), Some("toilet tissue"));
        assert_eq!(class_name(1000), None);
    }
}
