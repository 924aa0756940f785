use possync_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_what_is_wrong_and_exits_1() {
    let _serial = serial().await;
    let erp = erp_cluster().await;
    let pos = pos_cluster(&[]).await;
    // a POS on wal_level=replica, with a mapped table that has no primary key
    let bad = Cluster::start("badpos", false, &[]);
    bad.create_database("pos").await;
    bad.connect("pos")
        .await
        .batch_execute(&POS_SCHEMA.replace("id      bigserial PRIMARY KEY,", "id      bigserial,"))
        .await
        .expect("schema");

    let (code, text) = bridge_check(&[
        "--erp",
        &erp.url("erp"),
        "--source",
        &format!("good={}", pos.url("pos")),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("wal_level is logical"), "{text}");

    let (code, text) = bridge_check(&[
        "--erp",
        &erp.url("erp"),
        "--source",
        &format!("bad={}", bad.url("pos")),
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("wal_level is replica, it must be logical"),
        "{text}"
    );
    assert!(
        text.contains("pos.outbox has no primary key or replica identity"),
        "{text}"
    );

    // an ERP database without the extension
    let (code, text) = bridge_check(&[
        "--erp",
        &erp.url("postgres"),
        "--source",
        &format!("good={}", pos.url("pos")),
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("CREATE EXTENSION possync"), "{text}");
    // the server's own words and SQLSTATE, never tokio-postgres's bare "db error"
    assert!(
        text.contains("ERROR 3F000: schema \"possync\" does not exist"),
        "{text}"
    );
    assert!(!text.contains("db error"), "{text}");

    // status against a database without the extension says why, with the SQLSTATE
    let out = std::process::Command::new(bridge_path())
        .args(["status", "--erp", &erp.url("postgres")])
        .output()
        .expect("possync-bridge status");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("42P01") && err.contains("possync.source") && !err.contains("db error"),
        "{err}"
    );
}
