"use strict";
// Carries ?next= into the form and shows the error of a refused token.
(() => {
  const params = new URLSearchParams(location.search);
  const next = params.get("next");
  if (next && next.startsWith("/") && !next.startsWith("//")) document.getElementById("next").value = next;
  if (params.get("error")) document.getElementById("error").hidden = false;
})();
