use std::time::Duration;

use common::testsupport::TestEnv;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

#[tokio::test]
async fn an_object_is_put_read_back_and_fetched_over_a_presigned_url() {
    let env = TestEnv::new().await;
    let store = env.store();
    let key = Path::from("threads/abc/index.html");
    let body = b"<!doctype html><title>hi</title>".to_vec();
    store
        .objects()
        .put(&key, PutPayload::from(body.clone()))
        .await
        .expect("put to the S3 server");

    let read = store
        .objects()
        .get(&key)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(read.as_ref(), body.as_slice());

    let url = store
        .presigned_get(&key, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("S3 stores presign");
    assert!(
        url.contains(&env.prefix),
        "the key is under the test's prefix: {url}"
    );
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), body.as_slice());

    let listed = {
        use futures::TryStreamExt;
        store
            .objects()
            .list(Some(&Path::from("threads")))
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
    };
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].location, key);
}

#[tokio::test]
async fn a_missing_object_is_not_found() {
    let env = TestEnv::new().await;
    let err = env
        .store()
        .objects()
        .get(&Path::from("nope"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, object_store::Error::NotFound { .. }),
        "{err:?}"
    );
}
