//! The hub cache: a file cached by the Python client is found without the network, and an
//! uncached file offline is an error that says how to provide it. (One test in its own binary:
//! it sets environment variables.)

use tame_backbones::hub::model_file;

#[test]
fn python_cache_is_reused_and_offline_misses_explain_themselves() {
    let home = tempfile::tempdir().unwrap();
    // The layout huggingface_hub writes: refs/main holds the commit, snapshots/<commit>/file.
    let repo = home.path().join("hub/models--timm--resnet50.tv_in1k");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let cached = repo
        .join("snapshots")
        .join(commit)
        .join("model.safetensors");
    std::fs::write(&cached, b"cached").unwrap();

    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    assert_eq!(
        model_file("timm/resnet50.tv_in1k", "model.safetensors").unwrap(),
        cached
    );

    let err = model_file("timm/vgg16.tv_in1k", "model.safetensors")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hub:timm/vgg16.tv_in1k") && err.contains("--weights"),
        "{err}"
    );
}
