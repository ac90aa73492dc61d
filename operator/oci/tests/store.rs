//! The content store on a real directory: atomic puts, verification, concurrent writers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Barrier};

use stagecoach_oci::store::StoreError;
use stagecoach_oci::{ContentStore, Digest};

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn leftovers(store: &ContentStore) -> Vec<String> {
    fs::read_dir(store.blobs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn put_get_exists_size() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ContentStore::open(tmp.path()).unwrap();
    let data = blob(300_000, 1);
    let digest = Digest::of_bytes(&data);
    assert!(!store.exists(&digest).unwrap());
    assert!(matches!(
        store.size(&digest),
        Err(StoreError::NotFound { .. })
    ));
    let info = store.put(&data[..], None).unwrap();
    assert_eq!(info.digest, digest);
    assert_eq!(info.size, data.len() as u64);
    assert!(store.exists(&digest).unwrap());
    assert_eq!(store.size(&digest).unwrap(), data.len() as u64);
    let path = store.blob_path(&digest);
    assert_eq!(
        path,
        tmp.path().join("blobs/sha256").join(digest.hex()),
        "layout is blobs/sha256/<hex>"
    );
    let mut back = Vec::new();
    store
        .open_blob(&digest)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, data);
    // Blobs are read-only on disk.
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o444
    );
    store.verify(&digest).unwrap();
    assert!(matches!(
        store.read_to_vec(&digest, 1000),
        Err(StoreError::TooLarge { .. })
    ));
    assert_eq!(store.read_to_vec(&digest, 1 << 20).unwrap(), data);
    assert!(leftovers(&store).is_empty());
}

#[test]
fn a_wrong_digest_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ContentStore::open(tmp.path()).unwrap();
    let claimed = Digest::of_bytes(b"what the registry promised");
    let err = store
        .put(&b"what actually came"[..], Some(&claimed))
        .unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(claimed.as_str()));
    assert!(!store.exists(&claimed).unwrap());
    assert!(
        !store
            .exists(&Digest::of_bytes(b"what actually came"))
            .unwrap()
    );
    assert!(leftovers(&store).is_empty());

    let mut w = store.writer().unwrap();
    w.write_all(b"12345").unwrap();
    let d = Digest::of_bytes(b"12345");
    let err = w.commit_expected(&d, Some(4)).unwrap_err();
    assert!(matches!(err, StoreError::SizeMismatch { .. }), "{err}");
    assert!(!store.exists(&d).unwrap());

    // Abandoned writers leave nothing behind.
    let mut w = store.writer().unwrap();
    w.write_all(b"half").unwrap();
    drop(w);
    assert!(leftovers(&store).is_empty());
}

#[test]
fn verify_detects_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ContentStore::open(tmp.path()).unwrap();
    let info = store.put_bytes(b"original").unwrap();
    let path = store.blob_path(&info.digest);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&path, b"tampered").unwrap();
    assert!(matches!(
        store.verify(&info.digest),
        Err(StoreError::DigestMismatch { .. })
    ));
}

#[test]
fn a_known_blob_is_not_read_again() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ContentStore::open(tmp.path()).unwrap();
    let info = store.put_bytes(b"hello").unwrap();
    struct Explodes;
    impl Read for Explodes {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            panic!("the reader of a blob already stored was read");
        }
    }
    let again = store.put(Explodes, Some(&info.digest)).unwrap();
    assert_eq!(again, info);
}

#[test]
fn concurrent_puts_of_the_same_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    let data = Arc::new(blob(4 * 1024 * 1024 + 17, 9));
    let digest = Digest::of_bytes(&data);
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (root, data, barrier) = (root.clone(), data.clone(), barrier.clone());
            std::thread::spawn(move || {
                // Each thread opens its own store handle, like separate pods would.
                let store = ContentStore::open(&root).unwrap();
                barrier.wait();
                if i % 2 == 0 {
                    store.put(&data[..], None).unwrap()
                } else {
                    // Write in small pieces to interleave with the others.
                    let mut w = store.writer().unwrap();
                    for chunk in data.chunks(4096) {
                        w.write_all(chunk).unwrap();
                    }
                    w.commit().unwrap()
                }
            })
        })
        .collect();
    for h in handles {
        let info = h.join().unwrap();
        assert_eq!(info.digest, digest);
        assert_eq!(info.size, data.len() as u64);
    }
    let store = ContentStore::open(&root).unwrap();
    store.verify(&digest).unwrap();
    assert!(leftovers(&store).is_empty());
    let names: Vec<_> = fs::read_dir(store.blobs_dir()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

/// Run by `concurrent_puts_from_separate_processes` in child processes; does nothing when
/// run on its own.
#[test]
#[ignore = "helper run in child processes"]
fn child_process_put() {
    let (Ok(store), Ok(payload)) = (
        std::env::var("STAGECOACH_TEST_STORE"),
        std::env::var("STAGECOACH_TEST_PAYLOAD"),
    ) else {
        return;
    };
    let store = ContentStore::open(store).unwrap();
    for _ in 0..5 {
        let f = fs::File::open(&payload).unwrap();
        store.put(f, None).unwrap();
    }
}

#[test]
fn concurrent_puts_from_separate_processes() {
    // The store's promise is for processes (pods) sharing a volume: run this test binary
    // again as several children that put the same blob at once.
    let tmp = tempfile::tempdir().unwrap();
    let payload = tmp.path().join("payload");
    let data = blob(2 * 1024 * 1024, 3);
    fs::write(&payload, &data).unwrap();
    let store_dir = tmp.path().join("store");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--ignored", "--exact", "child_process_put", "--quiet"])
                .env("STAGECOACH_TEST_STORE", &store_dir)
                .env("STAGECOACH_TEST_PAYLOAD", &payload)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let store = ContentStore::open(&store_dir).unwrap();
    store.verify(&Digest::of_bytes(&data)).unwrap();
    assert!(leftovers(&store).is_empty());
}

#[test]
fn copy_between_stores_links_or_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let a = ContentStore::open(tmp.path().join("a")).unwrap();
    let b = ContentStore::open(tmp.path().join("b")).unwrap();
    let info = a.put_bytes(b"shared").unwrap();
    a.copy_blob_to(&info.digest, &b).unwrap();
    a.copy_blob_to(&info.digest, &b).unwrap();
    b.verify(&info.digest).unwrap();
}

#[test]
fn a_blob_stored_again_is_marked_used_now() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ContentStore::open(tmp.path()).unwrap();
    let bytes = blob(1000, 7);
    let info = store.put_bytes(&bytes).unwrap();
    let path = store.blob_path(&info.digest);
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    fs::File::open(&path).unwrap().set_modified(old).unwrap();
    let modified = || fs::metadata(&path).unwrap().modified().unwrap();
    assert!(modified() <= old + std::time::Duration::from_secs(1));
    // Stored again (as a stage that made the same config would): collection sees it as new.
    store.put_bytes(&bytes).unwrap();
    assert!(modified() > old + std::time::Duration::from_secs(3600));
}
