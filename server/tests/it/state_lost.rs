//! A restore or copy that left the broker's `config/` behind: topics' configuration and
//! every group's committed offsets gone while the commit log holds their messages. The start
//! said only "0 entries loaded"; it warns, naming the files.

use crate::common;

use std::time::Duration;

use common::*;

use crate::crash_loop::api::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_without_the_topic_and_offset_files_warns_that_they_are_lost() {
    let data = tempfile::tempdir().unwrap();
    let sluice = start_on(data.path(), 0, 0, 0, &[]);
    let api = Api::new(sluice.http);
    let (status, v) = api.produce("Kept", "k1", "body", None).await.unwrap();
    assert_eq!(status, 201, "{v}");
    sluice.stop();

    let again = start_on(data.path(), 0, 0, 0, &[]);
    assert!(
        !again.stderr_shows("no configuration", Duration::from_millis(500))
            && !again.stderr_shows("offsets file missing", Duration::from_millis(10)),
        "nothing lost, nothing said"
    );
    again.stop();

    let config = data.path().join("store").join("config");
    std::fs::remove_file(config.join("topics.json")).unwrap();
    std::fs::remove_file(config.join("consumerOffset.json")).unwrap();
    let lost = start_on(data.path(), 0, 0, 0, &[]);
    assert!(
        lost.stderr_shows(
            "topics with stored messages have no configuration",
            Duration::from_secs(10)
        ),
        "the lost topic configuration is said"
    );
    assert!(
        lost.stderr_shows("consumer offsets file missing", Duration::from_secs(10)),
        "the lost offsets are said"
    );
    lost.stop();
}
