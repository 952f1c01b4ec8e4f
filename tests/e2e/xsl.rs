//! MPS XSL templates and XML namespaces through the binary: an HMC-style order in its own
//! namespace is reshaped by an `xsl:template` into what Hosted Files expects, selected with
//! a prefix bound on the request, and the XML response carries `xmlns=""` where MPS does.

use crate::util::Sandbox;

const REQUEST: &str = r#"<?xml version="1.0"?>
<request xmlns:o="urn:example:orders" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <data>
    <order xmlns="urn:example:orders"><customer>zeta</customer><seat>ann</seat><seat>bob</seat></order>
  </data>
  <procedure>
    <execute namespace="Hosted Files" procedure="CreateTenantFolders">
      <before source="data" sourcePath="o:order" destination="executeData" mode="merge">
        <xsl:template match="/o:order">
          <folders>
            <tenant><xsl:value-of select="o:customer"/></tenant>
            <xsl:for-each select="o:seat"><user><name><xsl:value-of select="."/></name></user></xsl:for-each>
          </folders>
        </xsl:template>
      </before>
    </execute>
    <transform>
      <before template="done" destination="data" destinationPath="o:order/status" mode="merge"/>
    </transform>
  </procedure>
</request>
"#;

#[test]
fn an_xml_request_with_an_xsl_template_runs_through_the_binary() {
    let sb = Sandbox::new();
    let req = sb.write("order.xml", REQUEST);
    let r = sb.run(&["run", req.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    let tenant = sb.data().join("files/tenants/zeta");
    assert!(tenant.join("users/ann").is_dir(), "{r:?}");
    assert!(tenant.join("users/bob").is_dir(), "{r:?}");
    assert!(r.stdout.contains("status=\"committed\""), "{r:?}");
    // The order keeps its namespace; the namespace-less status written into it gets xmlns="".
    assert!(
        r.stdout.contains(r#"<order xmlns="urn:example:orders">"#),
        "{r:?}"
    );
    assert!(
        r.stdout.contains(r#"<status xmlns="">done</status>"#),
        "{r:?}"
    );

    // validate reads the same request and says nothing is wrong; a broken template is
    // reported with the file and line.
    let ok = sb.run(&["validate", req.to_str().unwrap()]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let bad = sb.write(
        "bad.xml",
        &REQUEST.replace(r#"<xsl:value-of select="o:customer"/>"#, "<xsl:value-of/>"),
    );
    let r = sb.run(&["validate", bad.to_str().unwrap()]);
    assert_ne!(r.code, 0, "{r:?}");
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("bad.xml:11"), "{r:?}");
    assert!(all.contains("select is missing"), "{r:?}");
}
