//! kedge-controller: a small Kubernetes-shaped control plane.
//!
//! Start reading at [`server`] (start-up and shutdown), then [`api`] (the
//! HTTP surface kubectl drives), [`write`] (the one write path, shared by the
//! API and the control loops) and [`store`] (redb, revisions, watch);
//! [`controllers`] are the control loops, [`fleet`] joins the nodes over MQTT.

pub mod api;
pub mod auth;
pub mod broker_acl;
pub mod client;
pub mod controllers;
pub mod crd;
pub mod fleet;
pub mod managed;
pub mod meta;
pub mod patch;
pub mod resources;
pub mod revoke;
pub mod scheduler;
pub mod selector;
pub mod serve;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod validate;
pub mod write;
