//! Relays one mirrored channel both ways.

use russh::server::{self, Msg as ServerMsg};
use russh::{client, Channel, ChannelMsg};

use crate::activity::Touch;
use crate::metrics::metrics;

/// Relays one channel both ways until both directions are done. Each direction runs on its own
/// so a full window one way never stalls the other. Data either way touches `moved` (the
/// session's activity in traffic mode).
pub(super) async fn relay(
    client_side: Channel<ServerMsg>,
    upstream: Channel<client::Msg>,
    server: server::Handle,
    moved: Option<Touch>,
) {
    let touch = || {
        if let Some(moved) = &moved {
            moved.touch();
        }
    };
    let id = client_side.id();
    let (mut from_client, to_client) = client_side.split();
    let (mut from_upstream, to_upstream) = upstream.split();
    let up = async {
        while let Some(msg) = from_client.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => {
                    touch();
                    metrics().ssh_bytes_up.inc_by(data.len() as u64);
                    to_upstream.data_bytes(data).await
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    touch();
                    metrics().ssh_bytes_up.inc_by(data.len() as u64);
                    to_upstream.extended_data_bytes(ext, data).await
                }
                ChannelMsg::Eof => to_upstream.eof().await,
                ChannelMsg::Close => break,
                // OpenSSH wants replies to these four: the upstream's replies come back in order.
                ChannelMsg::RequestPty {
                    term,
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                    terminal_modes,
                    ..
                } => {
                    to_upstream
                        .request_pty(
                            true,
                            &term,
                            col_width,
                            row_height,
                            pix_width,
                            pix_height,
                            &terminal_modes,
                        )
                        .await
                }
                ChannelMsg::RequestShell { .. } => to_upstream.request_shell(true).await,
                ChannelMsg::Exec { command, .. } => to_upstream.exec(true, command).await,
                ChannelMsg::RequestSubsystem { name, .. } => {
                    to_upstream.request_subsystem(true, name).await
                }
                ChannelMsg::SetEnv {
                    variable_name,
                    variable_value,
                    ..
                } => {
                    to_upstream
                        .set_env(false, variable_name, variable_value)
                        .await
                }
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                } => {
                    to_upstream
                        .window_change(col_width, row_height, pix_width, pix_height)
                        .await
                }
                ChannelMsg::Signal { signal } => to_upstream.signal(signal).await,
                ChannelMsg::RequestX11 { .. } | ChannelMsg::AgentForward { .. } => {
                    let _ = server.channel_failure(id).await;
                    Ok(())
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = to_upstream.close().await;
    };
    let down = async {
        while let Some(msg) = from_upstream.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => {
                    touch();
                    metrics().ssh_bytes_down.inc_by(data.len() as u64);
                    to_client.data_bytes(data).await
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    touch();
                    metrics().ssh_bytes_down.inc_by(data.len() as u64);
                    to_client.extended_data_bytes(ext, data).await
                }
                ChannelMsg::Eof => to_client.eof().await,
                ChannelMsg::ExitStatus { exit_status } => to_client.exit_status(exit_status).await,
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => server
                    .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                    .await
                    .map_err(|_| russh::Error::SendError),
                ChannelMsg::Success => server
                    .channel_success(id)
                    .await
                    .map_err(|_| russh::Error::SendError),
                ChannelMsg::Failure => server
                    .channel_failure(id)
                    .await
                    .map_err(|_| russh::Error::SendError),
                ChannelMsg::Close => break,
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = to_client.close().await;
    };
    tokio::join!(up, down);
}
