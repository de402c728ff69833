;; Random-bytes flood: asks wasi:random for 48 MiB in one call, work the host
;; would do in one uninterruptible call (and memory outside the budget) if
;; it did not cap the size of a request.
(component
  (import "wasi:random/random@0.2.0" (instance $random
    (export "get-random-bytes" (func (param "len" u64) (result (list u8))))))
  (alias export $random "get-random-bytes" (func $get-random-bytes))
  (core module $mem
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 1024))
    ;; cabi_realloc: a bump allocator.
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $bump) (i32.const 7)) (i32.const -8)))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (local.get $p)))
  (core instance $mi (instantiate $mem))
  (core func $grb (canon lower (func $get-random-bytes)
    (memory (core memory $mi "memory")) (realloc (core func $mi "realloc"))))
  (core module $main
    (import "host" "get-random-bytes" (func $grb (param i64 i32)))
    (func (export "price") (param i32 i32 i32 i32 i32 i32) (result i32)
      (call $grb (i64.const 50331648) (i32.const 32))
      (i32.const 16)))
  (core instance $i (instantiate $main
    (with "host" (instance (export "get-random-bytes" (func $grb))))))
  (type $money (record (field "amount" s64) (field "currency" string)))
  (type $line (record (field "sku" string) (field "product-id" string) (field "quantity" u32) (field "unit-price" $money)))
  (type $cart (record (field "merchant-id" string) (field "currency" string) (field "lines" (list $line))))
  (type $discount (record (field "sku" string) (field "label" string) (field "amount" $money)))
  (type $price-ty (func (param "cart" $cart) (result (result (list $discount) (error string)))))
  (func $price (type $price-ty)
    (canon lift (core func $i "price") (memory (core memory $mi "memory")) (realloc (core func $mi "realloc"))))
  (instance $pricing
    (export "money" (type $money))
    (export "line" (type $line))
    (export "cart" (type $cart))
    (export "discount" (type $discount))
    (export "price" (func $price)))
  (export "mercato:pricing/pricing@0.1.0" (instance $pricing)))
