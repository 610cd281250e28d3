//! RocketMQ ACL on the broker, through real TCP: requests signed with
//! `sluice_protocol::acl::Credentials` (HmacSHA1 over the sorted ext-field values and the body)
//! are accepted; a wrong secret, an unknown key, a tampered body or field, and a missing
//! signature are answered NO_PERMISSION (16) and store nothing; per-topic and per-group PUB/SUB
//! permissions hold; admin request codes need an admin account (and, with ACL off, a loopback
//! peer); secrets never show in `Debug`.

use crate::common;

use std::net::SocketAddr;

use common::*;
use sluice_broker::acl::{authorize, AclAccount, AclConfig, AddressPattern, Perm};
use sluice_broker::RemotingClient;
use sluice_protocol::acl::{Credentials, SIGNATURE};
use sluice_protocol::{request_code, response_code, RemotingCommand};

const NO_PERMISSION: i32 = response_code::NO_PERMISSION;

fn producer() -> Credentials {
    Credentials::new("orders-producer", "producer-secret-7f3a")
}
fn consumer() -> Credentials {
    Credentials::new("billing-consumer", "consumer-secret-91bc")
}
fn admin() -> Credentials {
    Credentials::new("ops-admin-account", "admin-secret-44d0")
}

fn account(c: &Credentials) -> AclAccount {
    AclAccount {
        access_key: c.access_key().into(),
        secret_key: c.secret_key().into(),
        ..AclAccount::default()
    }
}

fn acl_config() -> AclConfig {
    AclConfig {
        enabled: true,
        allow_remote_admin: false,
        accounts: vec![
            AclAccount {
                topic_perms: [("AclOrders".to_string(), Perm::Pub)].into(),
                ..account(&producer())
            },
            AclAccount {
                topic_perms: [
                    ("AclOrders".to_string(), Perm::Sub),
                    ("AclAudit".to_string(), Perm::Deny),
                ]
                .into(),
                group_perms: [("acl_billing".to_string(), Perm::Sub)].into(),
                ..account(&consumer())
            },
            AclAccount {
                admin: true,
                ..account(&admin())
            },
        ],
        white_remote_addresses: Vec::new(),
    }
}

fn signed(mut cmd: RemotingCommand, creds: &Credentials) -> RemotingCommand {
    creds.sign(&mut cmd);
    cmd
}

fn send(topic: &str, key: &str) -> RemotingCommand {
    send_request(
        topic,
        0,
        format!("body-{key}").as_bytes(),
        &props(Some("T"), Some(key)),
    )
}

async fn code_of(client: &RemotingClient, cmd: RemotingCommand) -> (i32, String) {
    let resp = client.invoke(cmd, RPC).await.expect("answered");
    (resp.code, resp.remark.unwrap_or_default())
}

/// Sends one message to `topic` signed by `creds`; returns its commit-log offset, once
/// dispatched.
async fn stored_at(
    cluster: &Cluster,
    client: &RemotingClient,
    topic: &str,
    key: &str,
    creds: &Credentials,
) -> u64 {
    let resp = client
        .invoke(signed(send(topic, key), creds), RPC)
        .await
        .unwrap();
    assert_eq!(resp.code, 0, "{:?}", resp.remark);
    let msg_id = resp.ext_fields.get_str("msgId").unwrap().to_owned();
    let (_, phys) = sluice_protocol::message::ids::decode_offset_msg_id(&msg_id).unwrap();
    wait_dispatched(&cluster.broker).await;
    phys
}

/// Every message of queue 0 of `topic`, read with admin credentials.
async fn stored_keys(client: &RemotingClient, topic: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut offset = 0;
    for _ in 0..100 {
        let req = signed(
            pull_request("acl_admin_reader", topic, 0, offset, 0, Some("*")),
            &admin(),
        );
        let resp = client.invoke(req, RPC).await.unwrap();
        match resp.code {
            0 => {
                for m in decode_records(&resp.body) {
                    out.push(m.props.get("KEYS").unwrap_or_default().to_string());
                }
            }
            19 | 20 | 21 | 17 => return out,
            other => panic!("admin pull answered {other}: {:?}", resp.remark),
        }
        offset = ext_i64(&resp, "nextBeginOffset");
    }
    out
}

#[tokio::test]
async fn signed_requests_pass_and_bad_or_missing_signatures_are_refused_storing_nothing() {
    let cluster = start_cluster_with(|c| c.acl = acl_config()).await;
    let client = cluster.client().await;

    // A good signature: stored.
    let (code, remark) = code_of(&client, signed(send("AclOrders", "good"), &producer())).await;
    assert_eq!(code, 0, "{remark}");

    // Wrong secret.
    let wrong = Credentials::new(producer().access_key(), "not-the-secret-000");
    let (code, remark) = code_of(&client, signed(send("AclOrders", "wrong-secret"), &wrong)).await;
    assert_eq!(code, NO_PERMISSION, "{remark}");
    assert!(remark.contains("signature"), "{remark}");
    assert!(!remark.contains("producer-secret"), "{remark}");

    // Unknown key: the same answer as a wrong secret.
    let unknown = Credentials::new("who-is-this", "producer-secret-7f3a");
    let (code, _) = code_of(&client, signed(send("AclOrders", "unknown"), &unknown)).await;
    assert_eq!(code, NO_PERMISSION);

    // Tampered body, tampered field, after signing.
    let mut tampered = signed(send("AclOrders", "tampered-body"), &producer());
    tampered.body = bytes::Bytes::from_static(b"changed in flight");
    assert_eq!(code_of(&client, tampered).await.0, NO_PERMISSION);
    let mut tampered = signed(send("AclOrders", "tampered-field"), &producer());
    tampered.ext_fields.insert("e", "1");
    assert_eq!(code_of(&client, tampered).await.0, NO_PERMISSION);

    // Missing signature, missing everything, empty access key (what ACL-less C++ clients send).
    let mut unsigned = signed(send("AclOrders", "no-signature"), &producer());
    unsigned.ext_fields.remove(SIGNATURE);
    let (code, remark) = code_of(&client, unsigned).await;
    assert_eq!(code, NO_PERMISSION);
    assert!(remark.contains("not signed"), "{remark}");
    assert_eq!(
        code_of(&client, send("AclOrders", "plain")).await.0,
        NO_PERMISSION
    );
    let mut empty = send("AclOrders", "empty-key");
    empty.ext_fields.insert("AccessKey", "");
    empty.ext_fields.insert(SIGNATURE, "");
    assert_eq!(code_of(&client, empty).await.0, NO_PERMISSION);

    // Only the good one is stored.
    wait_dispatched(&cluster.broker).await;
    assert_eq!(stored_keys(&client, "AclOrders").await, vec!["good"]);

    // A heartbeat without signature is refused too (every request is checked).
    let hb = RemotingCommand::request(request_code::HEART_BEAT, Default::default())
        .with_body(br#"{"clientID":"x","consumerDataSet":[],"producerDataSet":[]}"#.to_vec());
    assert_eq!(code_of(&client, hb).await.0, NO_PERMISSION);
    cluster.stop().await;
}

#[tokio::test]
async fn topic_and_group_permissions_are_enforced() {
    let cluster = start_cluster_with(|c| c.acl = acl_config()).await;
    let client = cluster.client().await;

    // Producer: PUB on AclOrders only.
    assert_eq!(
        code_of(&client, signed(send("AclOrders", "p1"), &producer()))
            .await
            .0,
        0
    );
    let (code, remark) = code_of(&client, signed(send("AclOther", "p2"), &producer())).await;
    assert_eq!(code, NO_PERMISSION);
    assert!(remark.contains("PUB on topic AclOther"), "{remark}");
    // The producer cannot consume.
    let pull = pull_request("acl_billing", "AclOrders", 0, 0, 0, Some("*"));
    assert_eq!(
        code_of(&client, signed(pull.clone(), &producer())).await.0,
        NO_PERMISSION
    );

    // Consumer: SUB on AclOrders and group acl_billing; no PUB.
    assert_eq!(
        code_of(&client, signed(send("AclOrders", "c1"), &consumer()))
            .await
            .0,
        NO_PERMISSION
    );
    wait_dispatched(&cluster.broker).await;
    let resp = client.invoke(signed(pull, &consumer()), RPC).await.unwrap();
    assert_eq!(resp.code, 0, "{:?}", resp.remark);
    assert_eq!(decode_records(&resp.body).len(), 1);
    // Another group, or a denied topic: refused.
    let other_group = pull_request("acl_other", "AclOrders", 0, 0, 0, None);
    let (code, remark) = code_of(&client, signed(other_group, &consumer())).await;
    assert_eq!(code, NO_PERMISSION);
    assert!(remark.contains("SUB on group acl_other"), "{remark}");
    let denied = pull_request("acl_billing", "AclAudit", 0, 0, 0, None);
    assert_eq!(
        code_of(&client, signed(denied, &consumer())).await.0,
        NO_PERMISSION
    );
    // The group's retry topic follows the group: sending back into %RETRY%acl_billing needs
    // SUB on acl_billing, which the consumer has and the producer has not.
    assert_eq!(
        code_of(
            &client,
            signed(send("%RETRY%acl_billing", "r1"), &producer())
        )
        .await
        .0,
        NO_PERMISSION
    );
    assert_eq!(
        code_of(
            &client,
            signed(send("%RETRY%acl_billing", "r2"), &consumer())
        )
        .await
        .0,
        0
    );
    // Consumer offsets: SUB on topic and group.
    let offset = |group: &str| {
        RemotingCommand::request(
            request_code::QUERY_CONSUMER_OFFSET,
            ext(&[
                ("consumerGroup", group),
                ("topic", "AclOrders"),
                ("queueId", "0"),
            ]),
        )
    };
    assert_ne!(
        code_of(&client, signed(offset("acl_billing"), &consumer()))
            .await
            .0,
        NO_PERMISSION
    );
    assert_eq!(
        code_of(&client, signed(offset("acl_other"), &consumer()))
            .await
            .0,
        NO_PERMISSION
    );
    // A heartbeat subscribing a topic the account may not read is refused.
    let hb = |topic: &str| {
        RemotingCommand::request(request_code::HEART_BEAT, Default::default()).with_body(
            format!(
                r#"{{"clientID":"127.0.0.1@acl","producerDataSet":[],"consumerDataSet":[{{"groupName":"acl_billing","consumeType":"CONSUME_PASSIVELY","messageModel":"CLUSTERING","consumeFromWhere":"CONSUME_FROM_FIRST_OFFSET","unitMode":false,"subscriptionDataSet":[{{"topic":"{topic}","subString":"*","tagsSet":[],"codeSet":[],"subVersion":0,"expressionType":"TAG","classFilterMode":false}}]}}]}}"#
            )
            .into_bytes(),
        )
    };
    assert_eq!(
        code_of(&client, signed(hb("AclOrders"), &consumer()))
            .await
            .0,
        0
    );
    assert_eq!(
        code_of(&client, signed(hb("AclAudit"), &consumer()))
            .await
            .0,
        NO_PERMISSION
    );
    cluster.stop().await;
}

fn create_topic(topic: &str) -> RemotingCommand {
    RemotingCommand::request(
        request_code::UPDATE_AND_CREATE_TOPIC,
        ext(&[
            ("topic", topic),
            ("defaultTopic", "TBW102"),
            ("readQueueNums", "4"),
            ("writeQueueNums", "4"),
            ("perm", "6"),
            ("topicFilterType", "SINGLE_TAG"),
            ("order", "false"),
        ]),
    )
}

#[tokio::test]
async fn admin_codes_need_an_admin_account_and_with_acl_off_a_loopback_peer() {
    let cluster = start_cluster_with(|c| c.acl = acl_config()).await;
    let client = cluster.client().await;
    let (code, remark) = code_of(&client, signed(create_topic("AclNew"), &producer())).await;
    assert_eq!(code, NO_PERMISSION);
    assert!(remark.contains("admin"), "{remark}");
    let (code, remark) = code_of(&client, signed(create_topic("AclNew"), &admin())).await;
    assert_eq!(code, 0, "{remark}");
    // An admin account may also send and consume anywhere.
    assert_eq!(
        code_of(&client, signed(send("AclNew", "a1"), &admin()))
            .await
            .0,
        0
    );
    cluster.stop().await;

    // ACL off (the default): loopback peers may create topics, as before.
    let cluster = start_cluster().await;
    let client = cluster.client().await;
    assert_eq!(code_of(&client, create_topic("OpenNew")).await.0, 0);
    cluster.stop().await;

    // ACL off: a remote peer is refused admin codes unless allow_remote_admin; other codes pass.
    let off = AclConfig::default();
    let remote = "10.1.2.3:5555".parse().unwrap();
    let local = "127.0.0.1:5555".parse().unwrap();
    assert!(authorize(&off, remote, &create_topic("X")).is_err());
    assert!(authorize(&off, local, &create_topic("X")).is_ok());
    assert!(authorize(&off, remote, &send("X", "k")).is_ok());
    let open = AclConfig {
        allow_remote_admin: true,
        ..AclConfig::default()
    };
    assert!(authorize(&open, remote, &create_topic("X")).is_ok());
    // ACL on: a loopback peer without an admin account is still refused.
    assert!(authorize(&acl_config(), local, &create_topic("X")).is_err());
}

#[test]
fn white_listed_peers_need_no_signature_and_other_peers_still_do() {
    let mut cfg = acl_config();
    cfg.white_remote_addresses = vec![
        AddressPattern::parse("10.1.2.*").unwrap(),
        AddressPattern::parse("192.168.0.0/16").unwrap(),
    ];
    let white: SocketAddr = "10.1.2.3:5000".parse().unwrap();
    let also_white: SocketAddr = "192.168.40.1:5000".parse().unwrap();
    let other: SocketAddr = "10.1.3.3:5000".parse().unwrap();
    assert!(
        authorize(&cfg, white, &send("AclAudit", "k")).is_ok(),
        "unsigned, any topic"
    );
    assert!(
        authorize(&cfg, also_white, &create_topic("X")).is_ok(),
        "admin too"
    );
    assert!(authorize(&cfg, other, &send("AclOrders", "k")).is_err());
    assert!(authorize(&cfg, other, &signed(send("AclOrders", "k"), &producer())).is_ok());
}

#[test]
fn secrets_never_show_in_debug_output() {
    let mut cfg = broker_config(std::path::Path::new("/tmp/x"), localhost());
    cfg.acl = acl_config();
    let text = format!("{cfg:?} {:?}", admin());
    for secret in [
        "producer-secret-7f3a",
        "consumer-secret-91bc",
        "admin-secret-44d0",
    ] {
        assert!(!text.contains(secret), "secret in Debug output");
    }
    assert!(text.contains("orders-producer"));
}

fn view_by_id(phys: u64) -> RemotingCommand {
    let h = sluice_protocol::remoting::custom::ViewMessageByIdRequestHeader {
        offset: phys as i64,
        topic: None,
    };
    RemotingCommand::request(request_code::VIEW_MESSAGE_BY_ID, h.to_ext())
}

/// VIEW_MESSAGE_BY_ID names an offset, not a topic: the record's own topic decides. Any signed
/// account used to read any record, other tenants' topics and half messages included.
#[tokio::test]
async fn viewing_a_message_by_id_needs_sub_on_its_topic() {
    let cluster = start_cluster_with(|c| c.acl = acl_config()).await;
    let client = cluster.client().await;
    let phys = stored_at(&cluster, &client, "AclOrders", "v1", &producer()).await;
    let view = || view_by_id(phys);
    // The consumer has SUB on AclOrders; the producer only PUB.
    let ok = client
        .invoke(signed(view(), &consumer()), RPC)
        .await
        .unwrap();
    assert_eq!(ok.code, 0, "{:?}", ok.remark);
    assert!(!ok.body.is_empty());
    let (code, remark) = code_of(&client, signed(view(), &producer())).await;
    assert_eq!(code, NO_PERMISSION, "{remark}");
    assert!(remark.contains("SUB on topic AclOrders"), "{remark}");
    let admin_view = client.invoke(signed(view(), &admin()), RPC).await.unwrap();
    assert_eq!(admin_view.code, 0);
    cluster.stop().await;
}

/// A dead-letter topic takes its group's permission whichever way it is read: a member
/// account could query its group's dead letters by key but was refused the same message by
/// id (that path held every broker topic, dead-letter ones included, for admins).
#[tokio::test]
async fn a_group_member_views_its_dead_letters_by_id() {
    let cluster = start_cluster_with(|c| c.acl = acl_config()).await;
    let client = cluster.client().await;
    let phys = stored_at(&cluster, &client, "%DLQ%acl_billing", "d1", &admin()).await;
    let view = || view_by_id(phys);
    let ok = client
        .invoke(signed(view(), &consumer()), RPC)
        .await
        .unwrap();
    assert_eq!(ok.code, 0, "a member of acl_billing: {:?}", ok.remark);
    let (code, remark) = code_of(&client, signed(view(), &producer())).await;
    assert_eq!(code, NO_PERMISSION, "no permission on the group: {remark}");
    cluster.stop().await;
}

/// Half messages, not-yet-due scheduled and timer messages are key-indexed under the broker's
/// own topics: a non-admin account whose default topic permission includes SUB read other
/// tenants' uncommitted transactions with QUERY_MESSAGE. Broker topics are admins' only.
#[tokio::test]
async fn querying_a_broker_topic_by_key_needs_an_admin_account() {
    let mut cfg = acl_config();
    let reader = Credentials::new("monitoring-reader", "reader-secret-5e21");
    cfg.accounts.push(AclAccount {
        default_topic_perm: Perm::Sub,
        ..account(&reader)
    });
    let cluster = start_cluster_with(move |c| c.acl = cfg).await;
    let client = cluster.client().await;
    let query = |topic: &str| {
        let h = sluice_protocol::remoting::custom::QueryMessageRequestHeader {
            topic: topic.into(),
            key: "k".into(),
            max_num: 32,
            begin_timestamp: 0,
            end_timestamp: i64::MAX,
            unique_key_query: None,
        };
        RemotingCommand::request(request_code::QUERY_MESSAGE, h.to_ext())
    };
    for topic in [
        "RMQ_SYS_TRANS_HALF_TOPIC",
        "SCHEDULE_TOPIC_XXXX",
        "%DLQ%acl_billing",
    ] {
        let (code, remark) = code_of(&client, signed(query(topic), &reader)).await;
        assert_eq!(code, NO_PERMISSION, "{topic}: {remark}");
    }
    let (code, remark) = code_of(&client, signed(query("AclOrders"), &reader)).await;
    assert_ne!(code, NO_PERMISSION, "a user topic with SUB: {remark}");
    let (code, remark) =
        code_of(&client, signed(query("RMQ_SYS_TRANS_HALF_TOPIC"), &admin())).await;
    assert_ne!(code, NO_PERMISSION, "an admin: {remark}");
    cluster.stop().await;
}

/// A dead-letter topic takes its group's permission: an account whose default topic
/// permission is SUB pulled any group's dead letters (and a send-back without `originMsgId`
/// could copy another account's record into its own retry topic).
#[test]
fn a_dead_letter_topic_takes_its_groups_permission() {
    let reader = AclAccount {
        default_topic_perm: Perm::Sub,
        group_perms: [("mine".to_string(), Perm::Sub)].into(),
        ..account(&Credentials::new("monitoring-reader", "reader-secret-5e21"))
    };
    assert_eq!(
        reader.topic_perm("%DLQ%victim"),
        reader.group_perm("victim")
    );
    assert!(!reader.topic_perm("%DLQ%victim").allows(Perm::Sub));
    assert!(reader.topic_perm("%DLQ%mine").allows(Perm::Sub));
    let granted = AclAccount {
        topic_perms: [("%DLQ%victim".to_string(), Perm::Sub)].into(),
        ..reader
    };
    assert!(
        granted.topic_perm("%DLQ%victim").allows(Perm::Sub),
        "named in topic_perms: that wins"
    );
}

/// A send-back without `originMsgId` names a record by its offset: it was accepted when the
/// group's members subscribe the record's topic, whichever account registered that
/// subscription, so an account with SUB on the group copied a topic it may not read into its
/// retry topic. The record's topic needs SUB now.
#[tokio::test]
async fn a_send_back_by_offset_needs_sub_on_the_records_topic() {
    let cluster = start_cluster_with(|c| c.acl = acl_config()).await;
    let client = cluster.client().await;
    let phys = stored_at(&cluster, &client, "AclAudit", "secret", &admin()).await;
    // The admin's member of acl_billing subscribes AclAudit, which the consumer may not read.
    let hb = RemotingCommand::request(request_code::HEART_BEAT, Default::default()).with_body(
        r#"{"clientID":"127.0.0.1@ops","producerDataSet":[],"consumerDataSet":[{"groupName":"acl_billing","consumeType":"CONSUME_PASSIVELY","messageModel":"CLUSTERING","consumeFromWhere":"CONSUME_FROM_FIRST_OFFSET","unitMode":false,"subscriptionDataSet":[{"topic":"AclAudit","subString":"*","tagsSet":[],"codeSet":[],"subVersion":0,"expressionType":"TAG","classFilterMode":false}]}]}"#
            .as_bytes()
            .to_vec(),
    );
    assert_eq!(code_of(&client, signed(hb, &admin())).await.0, 0);
    let back = sluice_protocol::remoting::custom::ConsumerSendMsgBackRequestHeader {
        offset: phys as i64,
        group: "acl_billing".into(),
        delay_level: 0,
        origin_msg_id: None,
        origin_topic: None,
        unit_mode: Some(false),
        max_reconsume_times: None,
    };
    let req = || RemotingCommand::request(request_code::CONSUMER_SEND_MSG_BACK, back.to_ext());
    let (code, remark) = code_of(&client, signed(req(), &consumer())).await;
    assert_eq!(code, NO_PERMISSION, "{remark}");
    assert!(remark.contains("SUB on topic AclAudit"), "{remark}");
    assert!(stored_keys(&client, "%RETRY%acl_billing").await.is_empty());
    let (code, remark) = code_of(&client, signed(req(), &admin())).await;
    assert_eq!(code, 0, "an admin may: {remark}");
    cluster.stop().await;
}
