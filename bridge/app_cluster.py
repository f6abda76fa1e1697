"""The composition root's part for a cluster (``[cluster] redis_url``): this bridge joins the
node registry and every cluster-wide service, before its hub takes connections."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.cluster import ClusterError
from bridge.cluster.node import ClusterNode
from bridge.errors import StartupRefused

if TYPE_CHECKING:
    from bridge.app import App


async def join_cluster(app: App) -> ClusterNode:
    """Register ``app`` among the cluster's nodes and order its conversations cluster-wide;
    StartupRefused without Redis (the bridges' shared state would split without anyone
    noticing)."""
    assert app.outbox is not None and app.storage is not None and app.sessions is not None
    node = ClusterNode(app.config.cluster, app.node_info())
    try:
        await node.start(app.outbox)
    except ClusterError as e:
        await node.close()
        raise StartupRefused(f"cannot join the cluster: {e}") from None
    app.cluster = node  # closed by the app's stop from here on
    app.health.add_probe(lambda: node.report(app.health))
    await node.report(app.health)
    app.storage.set_node(node.identity)
    # What node runs that are gone left running (this node's own earlier run included):
    # settled now, before this node's hub takes connections, and whenever another goes.
    sessions = app.sessions
    node.departures.add(
        "replies", sessions.inflight_nodes, lambda gone: sessions.schedule_recovery(nodes=gone)
    )
    if app.socketio is not None:
        replies = app.socketio.replies
        node.departures.add("client replies", replies.streaming_nodes, replies.settle_nodes)
    try:
        if app.socketio is not None:
            # Tabs here get the live frames of replies running on other nodes.
            await app.socketio.join_cluster(node)
        await node.order_turns(sessions.engine)
        await node.departures.settle_now()
    except ClusterError as e:
        raise StartupRefused(f"cannot join the cluster: {e}") from None
    node.departures.start()
    return node
