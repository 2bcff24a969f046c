use runnel_client::ClientLinkConfig;

const KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101";

// Goal: a client link file parses (the optional field defaulted), and each mistake an
// operator can make produces an error that names the field to fix.
#[test]
fn link_file_parses_and_errors_name_fields() {
    let good = format!("node = \"127.0.0.1:7000\"\nnode_shards = 2\nlink_id = 100\nkey = \"{KEY}\"\n");
    let link = ClientLinkConfig::parse(&good).unwrap();
    assert_eq!(link.node.port(), 7000);
    assert_eq!(link.node_shards, 2);
    assert_eq!(link.link_id, 100);
    assert_eq!(link.datagram_length_max, 1472);
    assert_eq!(ClientLinkConfig::parse(&link.to_toml()).unwrap(), link);

    let cases = [
        (good.replace("127.0.0.1:7000", "localhost"), "node ="),
        (good.replace("node_shards = 2", "node_shards = 0"), "node_shards"),
        (good.replace("127.0.0.1:7000", "127.0.0.1:65535"), "node port"),
        (good.replace(KEY, "beef"), "key"),
        (format!("{good}datagram_length_max = 100\n"), "datagram_length_max"),
        (format!("{good}datagram_length_max = 70000\n"), "datagram_length_max"),
        (good.replace("link_id = 100\n", ""), "link_id"),
        (format!("{good}colour = 1\n"), "colour"),
    ];
    for (text, field) in cases {
        let error = ClientLinkConfig::parse(&text).unwrap_err().0;
        assert!(error.contains(field), "error {error:?} should name {field}");
    }

    let path = std::env::temp_dir().join(format!("runnel-client-link-{}.toml", std::process::id()));
    std::fs::write(&path, link.to_toml()).unwrap();
    assert_eq!(ClientLinkConfig::load(&path).unwrap(), link);
    std::fs::remove_file(&path).unwrap();
    let missing = ClientLinkConfig::load(&path).unwrap_err().0;
    assert!(missing.contains(&path.display().to_string()), "{missing}");
}
