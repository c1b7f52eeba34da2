//! Each lab node's own view of the services' configuration, as a Debian operator
//! would write it on ox1 and ox2: `/etc/default/{slapd,saslauthd,cyrus-imapd}`,
//! slapd's `cn=config`, saslauthd's LDAP settings, Cyrus's `imapd.conf` and
//! `cyrus.conf`, Postfix's `main.cf`, and three small wrappers in
//! `/etc/ha.d/resource.d` for the names haresources uses where Debian's init scripts
//! are called differently (`ldap` → slapd, `cyrus` → cyrus-imapd) or where there is no
//! package (`openexchange` → the stand-in).
//!
//! Every path written here is one of the node's private directories ([`PRIVATE_DIRS`]):
//! inside the lab host it is the real path (`/etc/ldap`), on the machine a directory
//! of the lab's data dir. The machine's own `/etc`, `/var` and `/run` are never written.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::labcluster::LabCluster;

/// The directories each node has to itself, besides tandem's own: a fresh `/run` at
/// every power-on (pid files, sockets: `/run/cyrus-master.pid` is fixed in Debian's
/// init script), the services' configuration, Postfix's queue, the logs, and Debian's
/// default Cyrus directories (empty: whatever a Cyrus tool run without `-C` writes
/// stays in the node, never in the machine's /var/lib/cyrus). The data
/// directories are not among them: they are the replicated disks' mount points, plain
/// directories as on the whitepaper's machines (the file-system resource refuses a
/// directory that has something else mounted on it), and each node mounts its disks
/// in its own mount namespace.
pub const PRIVATE_DIRS: &[&str] = &[
    "/etc/ha.d",
    "/etc/default",
    "/etc/ldap",
    "/etc/postgresql",
    "/etc/postfix",
    "/etc/cyrus",
    "/var/spool/postfix",
    "/var/lib/postfix",
    "/var/lib/postgresql",
    "/var/lib/cyrus",
    "/var/spool/cyrus",
    "/var/log",
];

/// The directory tree's base DN.
pub const BASE_DN: &str = "dc=ox,dc=lab";
/// slapd's root DN, the LDAP client's identity.
pub const ADMIN_DN: &str = "cn=admin,dc=ox,dc=lab";
/// Its password (a lab's, not for production).
pub const ADMIN_PW: &str = "lab-admin-secret";
/// The mail user: in LDAP, authenticated by saslauthd for Cyrus, owner of the mailbox.
pub const USER: &str = "demo";
/// Its password.
pub const USER_PW: &str = "demo-secret";
/// The user's DN.
pub const USER_DN: &str = "uid=demo,ou=people,dc=ox,dc=lab";
/// Where the LDAP client adds its numbered entries.
pub const RECORDS_OU: &str = "ou=records,dc=ox,dc=lab";
/// The mail domain Postfix delivers into Cyrus.
pub const DOMAIN: &str = "ox.lab";
/// The stand-in's HTTP port.
pub const OX_PORT: u16 = 8080;
/// Debian's PostgreSQL cluster name and its data directory on r0's file system.
pub const PG_CLUSTER: &str = "main";

/// A file in `node`'s private directories, from the machine's side.
fn host_file(cluster: &LabCluster, node: &str, path: &str) -> anyhow::Result<PathBuf> {
    Ok(cluster
        .lab
        .host_dir(node)?
        .join("root")
        .join(path.trim_start_matches('/')))
}

/// Writes `text` to `path` as `node` sees it (mode `mode`).
pub fn write(
    cluster: &LabCluster,
    node: &str,
    path: &str,
    text: &str,
    mode: u32,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let file = host_file(cluster, node, path)?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&file, text).with_context(|| format!("write {path} on {node}"))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Copies the machine's (package-installed) `dir` into `node`'s private copy of it:
/// the node starts from what Debian installed (schemas, `master.cf`, defaults).
fn seed_from_machine(cluster: &LabCluster, node: &str, dir: &str) -> anyhow::Result<()> {
    let to = host_file(cluster, node, dir)?;
    if Path::new(dir).is_dir() {
        let out = std::process::Command::new("cp")
            .args([
                "-a",
                "--no-preserve=ownership",
                &format!("{dir}/."),
                &to.display().to_string(),
            ])
            .output()?;
        if !out.status.success() {
            anyhow::bail!(
                "copy {dir} into {node}'s own: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

/// Writes every node-local file of the services on `node`.
pub fn configure(cluster: &LabCluster, node: &str) -> anyhow::Result<()> {
    for dir in ["/etc/default", "/etc/ldap", "/etc/postfix"] {
        seed_from_machine(cluster, node, dir)?;
    }
    write(cluster, node, "/etc/default/slapd", SLAPD_DEFAULT, 0o644)?;
    write(
        cluster,
        node,
        "/etc/default/saslauthd",
        SASLAUTHD_DEFAULT,
        0o644,
    )?;
    write(
        cluster,
        node,
        "/etc/ldap/saslauthd.conf",
        &saslauthd_conf(),
        0o644,
    )?;
    write(
        cluster,
        node,
        "/etc/default/cyrus-imapd",
        CYRUS_DEFAULT,
        0o644,
    )?;
    write(cluster, node, "/etc/cyrus/imapd.conf", IMAPD_CONF, 0o644)?;
    write(cluster, node, "/etc/cyrus/cyrus.conf", CYRUS_CONF, 0o644)?;
    write(
        cluster,
        node,
        "/etc/postfix/main.cf",
        &postfix_main(),
        0o644,
    )?;
    let tandem = cluster
        .tandem_binary()
        .to_str()
        .context("tandem binary path")?;
    for (name, text) in [
        ("ldap", WRAP_LDAP.to_string()),
        ("cyrus", WRAP_CYRUS.to_string()),
        ("openexchange", wrap_openexchange(tandem)),
    ] {
        write(
            cluster,
            node,
            &format!("/etc/ha.d/resource.d/{name}"),
            &text,
            0o755,
        )?;
    }
    // slapd's cn=config, made by slapadd from LDIF (the node's own: slapd.d is config,
    // not data); Postfix's services out of the chroot (the LMTP socket is in /run).
    write(
        cluster,
        node,
        "/etc/ldap/tandem-config.ldif",
        &slapd_config(),
        0o600,
    )?;
    let lab = &cluster.lab;
    let run = |argv: &[&str]| -> anyhow::Result<String> {
        lab.run(node, argv)
            .with_context(|| format!("{} on {node}", argv.join(" ")))
    };
    run(&["rm", "-rf", "/etc/ldap/slapd.d"])?;
    run(&["install", "-d", "-m", "750", "/etc/ldap/slapd.d"])?;
    run(&[
        "slapadd",
        "-n",
        "0",
        "-F",
        "/etc/ldap/slapd.d",
        "-l",
        "/etc/ldap/tandem-config.ldif",
    ])?;
    run(&["chown", "-R", "openldap:openldap", "/etc/ldap/slapd.d"])?;
    run(&["postconf", "-c", "/etc/postfix", "-F", "*/*/chroot = n"])?;
    run(&["chown", "postfix:postfix", "/var/lib/postfix"])?;
    run(&[
        "install",
        "-d",
        "-o",
        "postgres",
        "-g",
        "adm",
        "-m",
        "1775",
        "/var/log/postgresql",
    ])?;
    Ok(())
}

const SLAPD_DEFAULT: &str = r#"# tandem demo --stack whitepaper: slapd from cn=config in /etc/ldap/slapd.d
SLAPD_CONF=
SLAPD_USER="openldap"
SLAPD_GROUP="openldap"
SLAPD_PIDFILE=
SLAPD_SERVICES="ldap:/// ldapi:///"
SLAPD_SENTINEL_FILE=/etc/ldap/noslapd
SLAPD_OPTIONS=""
"#;

/// No credential cache (`-c`): every login is checked against LDAP, as the stand-in
/// expects.
const SASLAUTHD_DEFAULT: &str = r#"# tandem demo --stack whitepaper: Cyrus's logins checked against LDAP
START=yes
DESC="SASL Authentication Daemon"
NAME="saslauthd"
MECHANISMS="ldap"
MECH_OPTIONS=""
THREADS=2
OPTIONS="-m /var/run/saslauthd -O /etc/ldap/saslauthd.conf"
"#;

fn saslauthd_conf() -> String {
    format!(
        "ldap_servers: ldap://127.0.0.1/\nldap_search_base: ou=people,{BASE_DN}\nldap_filter: (uid=%u)\n"
    )
}

const CYRUS_DEFAULT: &str = r#"# tandem demo --stack whitepaper: the node's own Cyrus configuration
CONF=/etc/cyrus/imapd.conf
MASTERCONF=/etc/cyrus/cyrus.conf
OPTIONS=""
"#;

/// The whitepaper's directories (/var/lib/imap, /var/spool/imap); logins through
/// saslauthd; the user's INBOX created at its first login or delivery.
const IMAPD_CONF: &str = r#"configdirectory: /var/lib/imap
partition-default: /var/spool/imap
sievedir: /var/lib/imap/sieve
admins: cyrus
allowplaintext: yes
sasl_pwcheck_method: saslauthd
sasl_mech_list: PLAIN LOGIN
sasl_saslauthd_path: /run/saslauthd/mux
unixhierarchysep: yes
lmtpsocket: /run/cyrus-lmtp/lmtp
idlesocket: /run/cyrus/socket/idle
notifysocket: /run/cyrus/socket/notify
proc_path: /run/cyrus/proc
mboxname_lockpath: /run/cyrus/lock
autocreate_quota: 0
autocreate_post: 1
lmtp_downcase_rcpt: 1
hashimapspool: true
syslog_prefix: cyrus
"#;

/// Every program named with `-C`: cyrmaster's own `-C` does not reach the services it
/// starts, which would otherwise read the machine's /etc/imapd.conf (and its spool).
const CYRUS_CONF: &str = r#"START {
  recover cmd="ctl_cyrusdb -C /etc/cyrus/imapd.conf -r"
}
SERVICES {
  imap cmd="imapd -C /etc/cyrus/imapd.conf -U 30" listen="imap" prefork=0 maxchild=50
  lmtpunix cmd="lmtpd -C /etc/cyrus/imapd.conf" listen="/run/cyrus-lmtp/lmtp" prefork=0 maxchild=20
}
EVENTS {
  checkpoint cmd="ctl_cyrusdb -C /etc/cyrus/imapd.conf -c" period=30
}
DAEMON {
}
"#;

/// Mail for the domain goes to Cyrus over LMTP (local(8)'s mailbox_transport: every
/// recipient, whether or not it is a Unix user).
fn postfix_main() -> String {
    format!(
        r#"# tandem demo --stack whitepaper
compatibility_level = 3.6
myhostname = mail.{DOMAIN}
mydomain = {DOMAIN}
myorigin = $mydomain
mydestination = $mydomain, localhost
inet_interfaces = all
inet_protocols = ipv4
mynetworks = 127.0.0.0/8 192.168.1.0/24
local_recipient_maps =
alias_maps =
alias_database =
mailbox_transport = lmtp:unix:/run/cyrus-lmtp/lmtp
smtputf8_enable = no
biff = no
maillog_file = /var/log/postfix.log
"#
    )
}

fn slapd_config() -> String {
    let schema: String = ["core", "cosine", "nis", "inetorgperson"]
        .iter()
        .map(|s| format!("include: file:///etc/ldap/schema/{s}.ldif\n\n"))
        .collect();
    format!(
        r#"dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: /run/slapd/slapd.pid
olcArgsFile: /run/slapd/slapd.args

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{schema}dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by dn.exact=gidNumber=0+uidNumber=0,cn=peercred,cn=external,cn=auth manage by * break

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {BASE_DN}
olcRootDN: {ADMIN_DN}
olcRootPW: {ADMIN_PW}
olcDbDirectory: /var/lib/ldap
olcAccess: {{0}}to attrs=userPassword by self write by anonymous auth by * none
olcAccess: {{1}}to * by * read
"#
    )
}

/// The directory's first entries: the base, the user, the client's branch.
pub fn ldap_data() -> String {
    format!(
        r#"dn: {BASE_DN}
objectClass: dcObject
objectClass: organization
o: ox
dc: ox

dn: ou=people,{BASE_DN}
objectClass: organizationalUnit
ou: people

dn: {RECORDS_OU}
objectClass: organizationalUnit
ou: records

dn: {USER_DN}
objectClass: inetOrgPerson
uid: {USER}
cn: Demo User
sn: User
mail: {USER}@{DOMAIN}
userPassword: {USER_PW}
"#
    )
}

const WRAP_LDAP: &str = r#"#!/bin/sh
# haresources says `ldap`; Debian's OpenLDAP init script is slapd.
exec /etc/init.d/slapd "$@"
"#;

const WRAP_CYRUS: &str = r#"#!/bin/sh
# haresources says `cyrus`; Debian's init script is cyrus-imapd. Its LMTP socket is in
# a directory Postfix may enter (Debian's /run/cyrus/socket is cyrus:mail 0750, and
# its README.Debian adds postfix to group mail instead).
install -d -o cyrus -g mail -m 755 /run/cyrus-lmtp
exec /etc/init.d/cyrus-imapd "$@"
"#;

/// The stand-in for Open-Xchange (no Debian package): started in the background with a
/// pid file, `start` returning once it answers on its port.
fn wrap_openexchange(tandem: &str) -> String {
    format!(
        r#"#!/bin/sh
# haresources says `openexchange`: a stand-in that uses LDAP, PostgreSQL and IMAP as
# Open-Xchange did (tandem demo-records openexchange).
PIDFILE=/run/openexchange.pid
case "$1" in
start)
    start-stop-daemon --start --quiet --background --make-pidfile --pidfile $PIDFILE \
        --exec {tandem} -- demo-records openexchange --port {OX_PORT} || exit 1
    exec {tandem} demo-records probe --addr 127.0.0.1:{OX_PORT} --timeout-ms 20000
    ;;
stop)
    start-stop-daemon --stop --quiet --retry TERM/5/KILL/5 --pidfile $PIDFILE --remove-pidfile
    exit 0
    ;;
status)
    if start-stop-daemon --status --pidfile $PIDFILE; then echo running; else echo stopped; fi
    ;;
*)
    echo "usage: $0 start|stop|status"; exit 1
    ;;
esac
"#
    )
}
