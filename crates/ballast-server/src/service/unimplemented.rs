//! Services whose RPCs arrive in later issues. Every RPC answers gRPC `Unimplemented` with a
//! message naming it: never a hang, a panic or a fake success.

use ballast_proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("ballast: {rpc} is not implemented yet"))
}

/// Implements a service trait for [`Unimplemented`]: `{ extra items }` (stream types and
/// streaming RPCs) followed by the unary RPCs. The whole impl is generated here so
/// `async_trait` sees the expanded methods.
macro_rules! unimplemented_service {
    ($tr:path { $($extra:tt)* } $($name:ident($req:ty) -> $resp:ty = $label:literal;)*) => {
        #[tonic::async_trait]
        impl $tr for Unimplemented {
            $($extra)*
            $(
                async fn $name(&self, _req: Request<$req>) -> Result<Response<$resp>, Status> {
                    Err(unimplemented($label))
                }
            )*
        }
    };
}

/// The one type that answers for every not-yet-built service.
#[derive(Default, Clone, Copy)]
pub struct Unimplemented;

unimplemented_service! {
    pb::auth_server::Auth {}
    auth_enable(pb::AuthEnableRequest) -> pb::AuthEnableResponse = "Auth.AuthEnable";
    auth_disable(pb::AuthDisableRequest) -> pb::AuthDisableResponse = "Auth.AuthDisable";
    auth_status(pb::AuthStatusRequest) -> pb::AuthStatusResponse = "Auth.AuthStatus";
    authenticate(pb::AuthenticateRequest) -> pb::AuthenticateResponse = "Auth.Authenticate";
    user_add(pb::AuthUserAddRequest) -> pb::AuthUserAddResponse = "Auth.UserAdd";
    user_get(pb::AuthUserGetRequest) -> pb::AuthUserGetResponse = "Auth.UserGet";
    user_list(pb::AuthUserListRequest) -> pb::AuthUserListResponse = "Auth.UserList";
    user_delete(pb::AuthUserDeleteRequest) -> pb::AuthUserDeleteResponse = "Auth.UserDelete";
    user_change_password(pb::AuthUserChangePasswordRequest) -> pb::AuthUserChangePasswordResponse = "Auth.UserChangePassword";
    user_grant_role(pb::AuthUserGrantRoleRequest) -> pb::AuthUserGrantRoleResponse = "Auth.UserGrantRole";
    user_revoke_role(pb::AuthUserRevokeRoleRequest) -> pb::AuthUserRevokeRoleResponse = "Auth.UserRevokeRole";
    role_add(pb::AuthRoleAddRequest) -> pb::AuthRoleAddResponse = "Auth.RoleAdd";
    role_get(pb::AuthRoleGetRequest) -> pb::AuthRoleGetResponse = "Auth.RoleGet";
    role_list(pb::AuthRoleListRequest) -> pb::AuthRoleListResponse = "Auth.RoleList";
    role_delete(pb::AuthRoleDeleteRequest) -> pb::AuthRoleDeleteResponse = "Auth.RoleDelete";
    role_grant_permission(pb::AuthRoleGrantPermissionRequest) -> pb::AuthRoleGrantPermissionResponse = "Auth.RoleGrantPermission";
    role_revoke_permission(pb::AuthRoleRevokePermissionRequest) -> pb::AuthRoleRevokePermissionResponse = "Auth.RoleRevokePermission";
}

/// Maintenance RPCs other than Status (used by `maintenance.rs`).
pub(crate) fn maintenance_unimplemented(rpc: &str) -> Status {
    unimplemented(rpc)
}
