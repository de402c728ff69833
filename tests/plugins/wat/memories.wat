;; Many-memories bomb: four memories, each under the 10 MiB default cap,
;; 12 MiB and 64 KiB together (multi-memory).
;; A hand-written component for the mercato:pricing/plugin world: it
;; type-checks (an upload accepts it) and would price a cart with no discount,
;; if it could be instantiated within the merchant's memory budget.
(component
  (core module $m
    (memory (export "memory") 1)
    (memory $b1 64)
    (memory $b2 64)
    (memory $b3 64)
    (global $bump (mut i32) (i32.const 1024))
    ;; cabi_realloc: a bump allocator in the first memory.
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $bump) (i32.const 7)) (i32.const -8)))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (local.get $p))
    ;; price: returns ok(empty list), read from zeroed memory at 16.
    (func (export "price") (param i32 i32 i32 i32 i32 i32) (result i32)
      (i32.const 16)))
  (core instance $i (instantiate $m))
  (type $money (record (field "amount" s64) (field "currency" string)))
  (type $line (record (field "sku" string) (field "product-id" string) (field "quantity" u32) (field "unit-price" $money)))
  (type $cart (record (field "merchant-id" string) (field "currency" string) (field "lines" (list $line))))
  (type $discount (record (field "sku" string) (field "label" string) (field "amount" $money)))
  (type $price-ty (func (param "cart" $cart) (result (result (list $discount) (error string)))))
  (func $price (type $price-ty)
    (canon lift (core func $i "price") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (instance $pricing
    (export "money" (type $money))
    (export "line" (type $line))
    (export "cart" (type $cart))
    (export "discount" (type $discount))
    (export "price" (func $price)))
  (export "mercato:pricing/pricing@0.1.0" (instance $pricing)))
