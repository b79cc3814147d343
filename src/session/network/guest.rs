//! Setting the guest up for its session's network, through the guest agent.

use super::{
    NetRequest, NetworkMode, FORWARD_ADDR, FORWARD_NAME, PROXY_ADDR, PROXY_NAME, PROXY_PORT,
};
use crate::session::error::SessionError;

impl NetRequest {
    /// The root shell script that sets the guest up for this network, run through the guest
    /// agent once it runs: the names of the forward and proxy addresses, QEMU's DNS in `open`
    /// (none otherwise), in `allow` the proxy for commands (`session.env`, read by
    /// deskvm-as-user) and for Firefox (a default-prefs file, read when Firefox starts). The
    /// NIC's static address comes with the image (`tools/guest/common`), so a resumed guest has
    /// it up; a guest without it (an older image) gets it here, which costs a networkd restart.
    pub fn guest_script(&self) -> String {
        let open = self.mode == NetworkMode::Open;
        let net = "[Match]\nType=ether\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n";
        let resolv = if open { "nameserver 10.0.2.3\n" } else { "" };
        let mut s = format!(
            "set -e\nmkdir -p /etc/systemd/network /etc/deskvm\n\
             n=/etc/systemd/network/10-deskvm.network\n\
             if ! grep -qs '^Address=10.0.2.15/24$' \"$n\"; then printf '{net}' > \"$n\"; systemctl restart systemd-networkd; fi\n\
             printf '{resolv}' > /etc/resolv.conf\n\
             sed -i '/deskvm\\.internal/d' /etc/hosts\n\
             printf '{FORWARD_ADDR} {FORWARD_NAME}\\n{PROXY_ADDR} {PROXY_NAME}\\n' >> /etc/hosts\n\
             touch /etc/deskvm/session.env\nsed -i '/# deskvm-network$/d' /etc/deskvm/session.env\n"
        );
        let prefs = "/usr/lib/firefox-esr/defaults/pref/deskvm-network.js";
        if let NetworkMode::Allow(_) = self.mode {
            let url = format!("http://{PROXY_NAME}:{PROXY_PORT}");
            let no_proxy = format!("{FORWARD_NAME},localhost,127.0.0.1");
            for var in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"] {
                s.push_str(&format!(
                    "echo '{var}={url} # deskvm-network' >> /etc/deskvm/session.env\n"
                ));
            }
            for var in ["no_proxy", "NO_PROXY"] {
                s.push_str(&format!(
                    "echo '{var}={no_proxy} # deskvm-network' >> /etc/deskvm/session.env\n"
                ));
            }
            s.push_str(&format!(
                "if [ -d /usr/lib/firefox-esr/defaults/pref ]; then printf '%s\\n' \\\n\
                 'pref(\"network.proxy.type\", 1);' 'pref(\"network.proxy.http\", \"{PROXY_NAME}\");' \\\n\
                 'pref(\"network.proxy.http_port\", {PROXY_PORT});' 'pref(\"network.proxy.ssl\", \"{PROXY_NAME}\");' \\\n\
                 'pref(\"network.proxy.ssl_port\", {PROXY_PORT});' 'pref(\"network.proxy.no_proxies_on\", \"{no_proxy}\");' \\\n\
                 'pref(\"dom.security.https_first\", false);' > {prefs}; fi\n"
            ));
        } else {
            // Forwards are plain HTTP on a name Firefox would otherwise try over HTTPS first.
            s.push_str(&format!(
                "if [ -d /usr/lib/firefox-esr/defaults/pref ]; then printf '%s\\n' \\\n\
                 'pref(\"dom.security.https_first\", false);' 'pref(\"network.proxy.type\", 0);' > {prefs}; fi\n"
            ));
        }
        s.push_str(
            "i=0; until { hostname -I; networkctl status; } 2>/dev/null | grep -q '10\\.0\\.2\\.15'; do\n\
             i=$((i+1)); [ $i -lt 100 ] || { echo 'the guest network did not come up' >&2; exit 1; }; sleep 0.1; done\n",
        );
        s
    }
}

/// A network or forward asked of a guest with no agent to set it up.
pub(in crate::session) fn no_agent() -> SessionError {
    SessionError::Unavailable {
        what: "network and forward",
        why: "this image has no guest agent to configure the guest's network with; start it with network none and no forward".into(),
    }
}

/// Runs [`NetRequest::guest_script`] in the guest. A guest without the agent (an imported
/// disk) cannot be configured: its start is refused rather than left half-connected.
pub(in crate::session) async fn configure_guest(
    vm: &crate::vm::Vm,
    net: &NetRequest,
    agent: bool,
) -> Result<(), SessionError> {
    if !agent {
        return Err(no_agent());
    }
    let out = vm
        .exec(&net.guest_script(), std::time::Duration::from_secs(60))
        .await?;
    if out.exit_code != 0 {
        return Err(SessionError::Setup(format!(
            "configuring the guest's network failed (exit {}): {}",
            out.exit_code,
            out.stderr.trim()
        )));
    }
    Ok(())
}
