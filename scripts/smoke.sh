#!/usr/bin/env bash
# Starts `huitou up` on a fresh data folder and walks the README's grpcurl
# tour against it. Usage: scripts/smoke.sh path/to/huitou
set -euo pipefail
bin=${1:?path to the huitou binary}
port=${SMOKE_PORT:-50151}
addr="127.0.0.1:$port"
data=$(mktemp -d)
log="$data/huitou.log"
"$bin" up --data-dir "$data" --listen "$addr" >"$log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
for _ in $(seq 1 100); do grep -q "operator key" "$log" 2>/dev/null && break; sleep 0.1; done
grep -q "operator key" "$log" || { cat "$log"; echo "FAIL: huitou up did not start"; exit 1; }
key=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['api_key'])" "$data/demo-shop.json")
auth="authorization: Bearer $key"
fail() { echo "FAIL: $*"; cat "$log"; exit 1; }
call() { grpcurl -plaintext -H "$auth" -d "$2" "$addr" "huitou.customer.v1.CustomerService/$1"; }

services=$(grpcurl -plaintext "$addr" list)
for s in huitou.customer.v1.CustomerService huitou.loyalty.v1.LoyaltyService huitou.coupon.v1.CouponService huitou.notification.v1.NotificationService grpc.health.v1.Health grpc.reflection.v1alpha.ServerReflection; do
  grep -qx "$s" <<<"$services" || fail "list does not show $s"
done
grpcurl -plaintext "$addr" describe huitou.customer.v1.CustomerService | grep -q "Records an order" \
  || fail "describe does not show RPC comments"
grpcurl -plaintext "$addr" describe huitou.customer.v1.RecordOrderRequest | grep -q "The platform order number" \
  || fail "describe does not show field comments"
grpcurl -plaintext "$addr" grpc.health.v1.Health/Check | grep -q SERVING || fail "health is not SERVING"

call UpsertCustomer '{"buyer_nick":"tb_smoke","name":"王五","phone":"13812345678"}' | grep -q '138\*\*\*\*5678' \
  || fail "upsert does not mask the phone"
call RecordOrder '{"order_no":"S-1","buyer_nick":"tb_smoke","status":"ORDER_STATUS_PAID",
  "items":[{"sku":"A","category":"童装","quantity":2,"unit_price_fen":9900}],"payable_fen":19800,
  "create_time":"2026-01-01T10:00:00Z","pay_time":"2026-01-01T10:01:00Z"}' >/dev/null
call ShipOrder '{"order_no":"S-1","shipment":{"carrier":"顺丰","tracking_number":"SF1"}}' | grep -q ORDER_STATUS_SHIPPED \
  || fail "ship"
call GetCustomer '{"buyer_nick":"tb_smoke"}' | grep -q '"spentFen": "19800"' || fail "stats"
id=$(call FindCustomerByPhone '{"phone":"13812345678"}' | python3 -c "import json,sys;print(json.load(sys.stdin)['customer']['id'])")
call RevealContact "{\"customer_id\":\"$id\",\"field\":\"CONTACT_FIELD_PHONE\",\"reason\":\"smoke test reveal\"}" \
  | grep -q '"13812345678"' || fail "reveal"
call ListAuditEntries "{\"customer_id\":\"$id\"}" | grep -q "smoke test reveal" || fail "audit"
lcall() { grpcurl -plaintext -H "$auth" -d "$2" "$addr" "huitou.loyalty.v1.LoyaltyService/$1"; }
for _ in $(seq 1 50); do
  lcall GetMember '{"buyer_nick":"tb_smoke"}' 2>/dev/null | grep -q '"balancePoints": "198"' && break
  sleep 0.1
done
lcall GetMember '{"buyer_nick":"tb_smoke"}' | grep -q '"balancePoints": "198"' \
  || fail "loyalty: the paid order did not earn its points"
lcall GetMemberPrice '{"buyer_nick":"tb_smoke","lines":[{"sku":"A","quantity":1,"unit_price_fen":9900}]}' \
  | grep -q '"tierCode": "REGULAR"' || fail "loyalty: member price"
ccall() { grpcurl -plaintext -H "$auth" -d "$2" "$addr" "huitou.coupon.v1.CouponService/$1"; }
template=$(ccall CreateTemplate '{"template":{"name":"满299减30","threshold":{"threshold_fen":29900,"amount_fen":3000},
  "valid_days_after_issue":30,"per_customer_limit":1,"stock":100}}' \
  | python3 -c "import json,sys;print(json.load(sys.stdin)['template']['templateId'])")
code=$(ccall IssueCoupon "{\"template_id\":\"$template\",\"customer_id\":\"$id\",\"request_id\":\"smoke-issue-1\"}" \
  | python3 -c "import json,sys;print(json.load(sys.stdin)['coupon']['code'])")
cart='{"lines":[{"sku":"A","category":"童装","quantity":2,"unit_price_fen":19900}],"shipping_fen":0,"total_fen":39800}'
ccall ValidateCoupon "{\"code\":\"$code\",\"customer_id\":\"$id\",\"cart\":$cart}" | grep -q '"discountFen": "3000"' \
  || fail "coupon: validate"
ccall RedeemCoupon "{\"code\":\"$code\",\"customer_id\":\"$id\",\"order_no\":\"S-2\",\"cart\":$cart}" \
  | grep -q COUPON_STATE_REDEEMED || fail "coupon: redeem"
out=$(ccall RedeemCoupon "{\"code\":\"$code\",\"customer_id\":\"$id\",\"order_no\":\"S-3\",\"cart\":$cart}" 2>&1 || true)
grep -q COUPON_ALREADY_USED <<<"$out" || fail "coupon: a second order redeemed it: $out"
typo="${code:0:15}$( [ "${code:15:1}" = A ] && echo B || echo A )"
out=$(ccall GetCoupon "{\"code\":\"$typo\"}" 2>&1 || true)
grep -q CODE_TYPO <<<"$out" || fail "coupon: a typo was not caught: $out"
ccall GetTemplateResults "{\"template_id\":\"$template\"}" | grep -q '"discountCostFen": "3000"' \
  || fail "coupon: results"
ncall() { grpcurl -plaintext -H "$auth" -d "$2" "$addr" "huitou.notification.v1.NotificationService/$1"; }
# A window two hours from now (shop time): a message sent now waits for it.
closed=$(python3 -c "
import datetime
m = (datetime.datetime.utcnow() + datetime.timedelta(hours=8))
m = m.hour * 60 + m.minute
s = m + 120 if m < 1200 else 60
print('{\"policy\":{\"time_zone\":\"Asia/Shanghai\",\"windows\":[{\"start_minute\":%d,\"end_minute\":%d}],\"max_attempts\":5,\"unpaid_reminder_minutes\":60,\"duplicate_days\":7}}' % (s, s + 60))")
ncall SetSendPolicy "$closed" >/dev/null || fail "notification: set policy"
ntemplate=$(ncall CreateTemplate '{"template":{"name":"关怀","channel":"CHANNEL_SMS","kind":"MESSAGE_KIND_TRANSACTIONAL",
  "body":"亲，您的订单{{order_no}}已签收，使用中有问题随时联系我们。","signature":"回头客"}}' \
  | python3 -c "import json,sys;print(json.load(sys.stdin)['template']['id'])")
message=$(ncall SendNotification "{\"customer_id\":\"$id\",\"template_id\":\"$ntemplate\",\"variables\":{\"order_no\":\"S-1\"}}")
grep -q MESSAGE_STATUS_DEFERRED <<<"$message" || fail "notification: not deferred outside the window: $message"
mid=$(python3 -c "import json,sys;print(json.loads(sys.argv[1])['message']['id'])" "$message")
ncall SetSendPolicy '{"policy":{"time_zone":"Asia/Shanghai","windows":[{"start_minute":0,"end_minute":1440}],
  "max_attempts":5,"unpaid_reminder_minutes":60,"duplicate_days":7}}' | grep -q '"replacedMessages": "1"' \
  || fail "notification: the deferred message was not placed again"
for _ in $(seq 1 50); do
  ncall GetMessage "{\"message_id\":\"$mid\"}" | grep -q MESSAGE_STATUS_SENT && break
  sleep 0.1
done
ncall GetMessage "{\"message_id\":\"$mid\"}" | grep -q MESSAGE_STATUS_SENT || fail "notification: never sent"
grep -q "$mid" "$data/messages.jsonl" || fail "notification: the file provider did not write the message"
grep -q "138\*\*\*\*5678" "$data/messages.jsonl" || fail "notification: the sink shows the phone unmasked"
out=$(call RecordOrder '{"order_no":"","buyer_nick":"x"}' 2>&1 || true)
grep -q "InvalidArgument" <<<"$out" || fail "bad input is not INVALID_ARGUMENT: $out"
verbose=$(grpcurl -plaintext -H "$auth" -H "x-request-id: smoke-42" -v -d '{}' "$addr" huitou.customer.v1.ShopService/GetShop)
grep -qi "x-request-id: smoke-42" <<<"$verbose" || fail "the request id is not echoed"
shop=$("$bin" admin create-shop --name "冒烟测试店" --data-dir "$data")
python3 -c "import json,sys;d=json.loads(sys.argv[1]);assert d['shop_id'] and d['api_key'].startswith('hk_')" "$shop" \
  || fail "admin create-shop did not print {shop_id, api_key}: $shop"
other_key=$(python3 -c "import json,sys;print(json.loads(sys.argv[1])['api_key'])" "$shop")
out=$(grpcurl -plaintext -H "authorization: Bearer $other_key" -d "{\"customer_id\":\"$id\"}" "$addr" \
  huitou.customer.v1.CustomerService/GetCustomer 2>&1 || true)
grep -q "NotFound" <<<"$out" || fail "another shop's key sees the customer: $out"
grep -q "CUSTOMER_NOT_FOUND" <<<"$out" || fail "error details are not decoded through reflection: $out"
if grep -q "13812345678" "$log"; then fail "the phone number appeared in the log"; fi
echo "smoke test passed"
