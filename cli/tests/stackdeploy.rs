//! `swarmkit stack deploy`: a stack with one bad part is refused naming it and leaves the
//! cluster exactly as it was; a good one deploys, answers through the routing mesh, is seen by
//! the stock docker CLI's `stack` verbs, updates in place and is removed completely.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Cluster;

/// Everything a stack could have left behind, as the stock docker CLI lists it.
fn inventory(c: &Cluster) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for what in ["network", "service", "secret", "config"] {
        let out = c
            .docker(&[what, "ls", "--format", "{{.ID}} {{.Name}}"])
            .ok()
            .stdout;
        all.extend(out.lines().map(|l| format!("{what} {l}")));
    }
    all
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// Good networks, a secret from a file and a good service around the one bad part, so a
/// deploy that created in docker's order would have made all of those first.
const AROUND: &str = concat!(
    "services:\n",
    "  ok:\n",
    "    image: whoami\n",
    "    networks: [front]\n",
    "    secrets: [pw]\n",
    "networks:\n",
    "  front:\n",
    "secrets:\n",
    "  pw:\n",
    "    file: ./pw.txt\n",
);

#[test]
fn a_stack_with_one_bad_service_is_refused_and_creates_nothing() {
    require_root!();
    let c = Cluster::up("stackbad", 2);
    let dir = std::env::temp_dir().join(format!("{}-compose", c.name));
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir, "pw.txt", "s3cret\n");
    let before = inventory(&c);

    let cases = [
        // The manager refuses it (a volume on a built-in image), found by its dry run.
        (
            "services:\n  bad:\n    image: whoami\n    volumes: ['data:/data']\nvolumes:\n  data:\n",
            &["service bad_bad", "--mount needs an image from a registry"][..],
        ),
        // A secret neither the file declares nor the cluster has.
        (
            "services:\n  bad:\n    image: whoami\n    secrets: [gone]\nsecrets:\n  gone:\n    external: true\n",
            &["secret \"gone\"", "could not be found"][..],
        ),
        // An option swarmkit does not do, refused by its path in the file.
        (
            "services:\n  bad:\n    image: whoami\n    privileged: true\n",
            &["services.bad.privileged"][..],
        ),
        // Two services of the stack publishing one port: the second create would fail.
        (
            "services:\n  bad:\n    image: whoami\n    ports: ['8080:80']\n  bad2:\n    image: whoami\n    ports: ['8080:80']\n",
            &["service bad_bad2", "8080"][..],
        ),
    ];
    for (bad, named) in cases {
        // The bad part and what surrounds it as two files, the later merged over the
        // earlier, as -c twice does.
        let first = write(&dir, "bad.yml", bad);
        let second = write(&dir, "around.yml", AROUND);
        let out = c.sk(&["stack", "deploy", "-c", &first, "-c", &second, "bad"]);
        let said = format!("{}{}", out.stdout, out.stderr);
        assert_ne!(out.code, 0, "{said}");
        for word in named {
            assert!(said.contains(word), "{word:?} not in: {said}");
        }
        assert!(
            said.contains("Nothing was created") || said.contains("nothing was created"),
            "{said}"
        );
        assert!(!said.contains("Creating"), "{said}");
        assert_eq!(inventory(&c), before, "after: {said}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

const STACK: &str = "\
services:
  web:
    image: whoami
    ports:
      - \"8080:80\"
    networks: [front]
    deploy:
      replicas: REPLICAS
  app:
    image: whoami
    networks: [front, back]
    environment:
      GREETING: ${GREETING:-hello}
  db:
    image: postgres
    networks: [back]
networks:
  front:
  back:
";

#[test]
fn a_good_stack_deploys_serves_updates_in_place_and_is_removed() {
    require_root!();
    let c = Cluster::up("stackgood", 3);
    let dir = std::env::temp_dir().join(format!("{}-compose", c.name));
    std::fs::create_dir_all(&dir).unwrap();
    let before = inventory(&c);

    let compose = write(&dir, "stack.yml", &STACK.replace("REPLICAS", "1"));
    let deploy = c.sk(&["stack", "deploy", "-c", &compose, "demo"]).ok();
    for made in [
        "Creating network demo_front",
        "Creating network demo_back",
        "Creating service demo_web",
        "Creating service demo_app",
        "Creating service demo_db",
    ] {
        assert!(deploy.stdout.contains(made), "{}", deploy.stdout);
    }
    // Networks first, services last, as docker prints them.
    let first_service = deploy.stdout.find("Creating service").unwrap();
    assert!(deploy.stdout.rfind("Creating network").unwrap() < first_service);

    c.eventually(
        "web answers through the mesh",
        Duration::from_secs(60),
        || {
            c.curl("node1", "http://localhost:8080/")
                .is_some_and(|body| body.contains("Name: demo_web.1."))
        },
    );
    // The stock docker CLI sees the stack swarmkit made.
    let ls = c.docker(&["stack", "ls"]).ok().stdout;
    assert!(
        ls.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["demo", "3"]),
        "{ls}"
    );
    let services = c
        .docker(&["stack", "services", "demo", "--format", "{{.Name}}"])
        .ok()
        .stdout;
    let names: BTreeSet<&str> = services.lines().collect();
    assert_eq!(names, BTreeSet::from(["demo_app", "demo_db", "demo_web"]));
    let env = c
        .docker(&[
            "service",
            "inspect",
            "demo_app",
            "--format",
            "{{json .Spec.TaskTemplate.ContainerSpec.Env}}",
        ])
        .ok()
        .stdout;
    assert_eq!(env.trim(), "[\"GREETING=hello\"]");
    // And swarmkit's own verbs: its table of the stack's tasks, docker's columns.
    c.eventually("every task running", Duration::from_secs(60), || {
        let ps = c.sk(&["stack", "ps", "demo"]).ok().stdout;
        ps.starts_with("ID ")
            && ps.contains("DESIRED STATE")
            && ps.lines().filter(|l| l.contains(" Running ")).count() == 3
    });
    let sk_ls = c.sk(&["stack", "ls"]).ok().stdout;
    assert!(sk_ls.starts_with("NAME"), "{sk_ls}");
    assert!(
        sk_ls
            .lines()
            .any(|l| l.split_whitespace().eq(["demo", "3"])),
        "{sk_ls}"
    );

    // A redeploy with changed replicas updates in place.
    let web_id = c
        .docker(&["service", "inspect", "demo_web", "--format", "{{.ID}}"])
        .ok()
        .stdout;
    write(&dir, "stack.yml", &STACK.replace("REPLICAS", "2"));
    let again = c.sk(&["stack", "deploy", "-c", &compose, "demo"]).ok();
    assert!(
        again.stdout.contains("Updating service demo_web"),
        "{}",
        again.stdout
    );
    assert!(!again.stdout.contains("Creating"), "{}", again.stdout);
    c.eventually("demo_web at 2/2", Duration::from_secs(60), || {
        c.docker(&[
            "service",
            "ls",
            "--filter",
            "name=demo_web",
            "--format",
            "{{.Replicas}}",
        ])
        .stdout
        .trim()
            == "2/2"
    });
    let same_id = c
        .docker(&["service", "inspect", "demo_web", "--format", "{{.ID}}"])
        .ok()
        .stdout;
    assert_eq!(same_id, web_id, "updated in place, not replaced");

    let rm = c.sk(&["stack", "rm", "demo"]).ok();
    assert!(
        rm.stdout.contains("Removing service demo_web"),
        "{}",
        rm.stdout
    );
    assert!(
        rm.stdout.contains("Removing network demo_back"),
        "{}",
        rm.stdout
    );
    assert_eq!(inventory(&c), before);
    let nothing = c.sk(&["stack", "rm", "demo"]);
    assert!(
        nothing.stderr.contains("Nothing found in stack: demo"),
        "{}",
        nothing.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}
