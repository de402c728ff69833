// An example mercato pricing plugin in JavaScript: volume discounts.
//
// The host calls `pricing.price(cart)` with this merchant's lines only
// (`mercato:pricing@0.2.0`: the cart also carries the shopper's
// `discountCodes` and the merchant's `config`, unused here). Money is integer
// minor units; in JavaScript the WIT `s64` amounts are BigInts, so all
// arithmetic below is on BigInt.
//
// - 5 or more units of a line: 5 % off that line.
// - 10 or more units: 15 % off instead.

const TIERS = [
  { minQuantity: 10, percent: 15n },
  { minQuantity: 5, percent: 5n },
];

export const pricing = {
  price(cart) {
    const discounts = [];
    for (const line of cart.lines) {
      const tier = TIERS.find((t) => line.quantity >= t.minQuantity);
      if (!tier) continue;
      const gross = line.unitPrice.amount * BigInt(line.quantity);
      const amount = (gross * tier.percent) / 100n;
      if (amount > 0n) {
        discounts.push({
          sku: line.sku,
          label: `${tier.percent}% off ${tier.minQuantity}+`,
          amount: { amount, currency: cart.currency },
          code: undefined,
        });
      }
    }
    console.log(`volume: ${discounts.length} discounts on ${cart.lines.length} lines`);
    return { discounts, rejectedCodes: [] };
  },
};
