//! Reading the host: one [`ObservedHost`] from the kernel and the device.

use wgcable_netlink::Netlink;
use wgcable_peers::WgDevice;

use super::ObservedHost;
use crate::Error;

/// Reads the device's link and addresses, the WireGuard device, the routes of `table` and the
/// rules. The reads are independent, so they run concurrently (netlink requests are
/// pipelined on one socket; the device is read on the blocking pool).
pub async fn observe(
    netlink: &dyn Netlink,
    device: &dyn WgDevice,
    name: &str,
    table: u32,
) -> Result<ObservedHost, Error> {
    let link_and_addrs = async {
        let link = netlink
            .link_get(name)
            .await
            .map_err(Error::netlink(format!("looking up link {name}")))?;
        let addrs = match &link {
            Some(l) => netlink
                .addr_list(l.index)
                .await
                .map_err(Error::netlink(format!("listing addresses of {name}")))?,
            None => Vec::new(),
        };
        Ok::<_, Error>((link, addrs))
    };
    let wg = async {
        device
            .read(name)
            .await
            .map_err(Error::device(format!("reading WireGuard device {name}")))
    };
    let routes = async {
        netlink
            .route_list(table)
            .await
            .map_err(Error::netlink(format!("listing routing table {table}")))
    };
    let rules = async {
        netlink
            .rule_list()
            .await
            .map_err(Error::netlink("listing routing rules"))
    };
    let (link_and_addrs, wg, routes, rules) = tokio::join!(link_and_addrs, wg, routes, rules);
    let (link, addrs) = link_and_addrs?;
    Ok(ObservedHost {
        link,
        addrs,
        device: wg?,
        routes: routes?,
        rules: rules?,
    })
}
