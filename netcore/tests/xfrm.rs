//! Real-kernel tests of the IPsec layer. They need root and work in their own namespace
//! (`sktest-<unique>-xfrm-*`), removed by testkit's guard. On a kernel without ESP or GCM (the
//! project's host kernel) they prove the refusal names what is missing; where the kernel has
//! both they reconcile SAs and policies and read them back. Traffic through ESP is proven on
//! QEMU guests (testbed/tests/encrypted.rs).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use netcore::netns::NetNs;
use netcore::xfrm::{self, Ipsec, IpsecSpec, Key, NetworkIpsec, XfrmError};
use testkit::netns::Namespaces;

fn key(tag: u32) -> Key {
    Key {
        tag,
        material: [tag as u8; xfrm::KEY_LEN],
    }
}

fn spec(keys: Vec<Key>, primary: u32, peers: &[Ipv4Addr]) -> IpsecSpec {
    IpsecSpec {
        local: Ipv4Addr::new(192, 168, 78, 1),
        port: 7789,
        networks: vec![NetworkIpsec {
            network_id: "encnet".into(),
            vni: 4200,
            keys,
            primary,
            peers: peers.iter().copied().collect::<BTreeSet<_>>(),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_names_what_is_missing_or_sas_reconcile() {
    testkit::require_root!();
    let nss = Namespaces::new("xfrm");
    let ns = NetNs::open(&nss.create("probe")).expect("namespace");

    match xfrm::probe(&ns).await {
        Err(XfrmError::Unsupported { missing }) => {
            let msg = XfrmError::Unsupported {
                missing: missing.clone(),
            }
            .to_string();
            eprintln!("kernel cannot encrypt: {msg}");
            assert!(
                missing
                    .iter()
                    .any(|m| m.contains("ESP") || m.contains("GCM")),
                "{missing:?}"
            );
            assert!(msg.contains("--backend qemu"), "{msg}");
            // Nothing encrypted is needed: reconciling an empty spec must still work here.
            let mut ipsec = Ipsec::new(&ns).expect("xfrm netlink");
            let empty = IpsecSpec {
                local: Ipv4Addr::new(192, 168, 78, 1),
                port: 4789,
                networks: vec![],
            };
            ipsec.apply(&empty).await.expect("empty spec applies");
            assert!(ipsec.sas().await.unwrap().is_empty());
            // The nftables half needs no ESP: the kernel takes the table as written, twice.
            let table = xfrm::table_text(xfrm::NFT_TABLE, 7789, &[4097, 4098].into());
            for _ in 0..2 {
                netcore::nft::apply_nft(&ns, &table).expect("the table applies");
            }
            let listed =
                netcore::nft::run_nft(&ns, &["list", "table", "ip", xfrm::NFT_TABLE], None)
                    .expect("nft list");
            assert!(listed.contains("meta mark set 0x5c001001"), "{listed}");
            assert!(listed.contains("missing counter packets 0"), "{listed}");
        }
        Err(e) => panic!("probe failed: {e}"),
        Ok(()) => {
            let mut ipsec = Ipsec::new(&ns).expect("xfrm netlink");
            let p1 = Ipv4Addr::new(192, 168, 78, 2);
            let p2 = Ipv4Addr::new(192, 168, 78, 3);

            ipsec
                .apply(&spec(vec![key(1)], 1, &[p1, p2]))
                .await
                .unwrap();
            let sas = ipsec.sas().await.unwrap();
            assert_eq!(sas.len(), 4, "one in, one out per peer: {sas:?}");
            assert_eq!(ipsec.policies().await.unwrap().len(), 2);

            // Rotation, first half: a second key to receive with, still sending with key 1.
            ipsec
                .apply(&spec(vec![key(1), key(2)], 1, &[p1, p2]))
                .await
                .unwrap();
            assert_eq!(ipsec.sas().await.unwrap().len(), 6);
            // Second half: send with key 2; the outbound SAs are replaced, not added to.
            ipsec
                .apply(&spec(vec![key(1), key(2)], 2, &[p1, p2]))
                .await
                .unwrap();
            let sas = ipsec.sas().await.unwrap();
            assert_eq!(sas.len(), 6);
            let local = Ipv4Addr::new(192, 168, 78, 1);
            assert!(
                sas.iter()
                    .filter(|s| s.src == local)
                    .all(|s| s.spi == xfrm::spi("encnet", local, s.dst, 2))
            );
            // Membership: p2 leaves; its SAs and policy go, nothing stale stays.
            ipsec
                .apply(&spec(vec![key(1), key(2)], 2, &[p1]))
                .await
                .unwrap();
            let sas = ipsec.sas().await.unwrap();
            assert!(sas.iter().all(|s| s.src != p2 && s.dst != p2), "{sas:?}");
            assert_eq!(ipsec.policies().await.unwrap().len(), 1);
            // Re-applying changes nothing.
            let before = ipsec.sas().await.unwrap();
            ipsec
                .apply(&spec(vec![key(1), key(2)], 2, &[p1]))
                .await
                .unwrap();
            assert_eq!(ipsec.sas().await.unwrap(), before);
            ipsec
                .apply(&IpsecSpec {
                    local,
                    port: 7789,
                    networks: vec![],
                })
                .await
                .unwrap();
            assert!(ipsec.sas().await.unwrap().is_empty());
            assert!(ipsec.policies().await.unwrap().is_empty());
        }
    }
}
